"""The detector and conformal record stored in a bundle: hashed, kept by retemper, absent in older bundles."""

from __future__ import annotations

import numpy as np
import torch

from covid_cxr.bundle import load_bundle, retemper_bundle, store_reliability, write_bundle
from covid_cxr.bundle_info import OOD_FORMAT, OOD_NPZ, ConformalInfo, OodInfo, read_bundle_info
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.spec import Preprocess
from covid_cxr.models.zoo import build_model
from covid_cxr.reliability.assess import Reliability
from covid_cxr.reliability.gate import GateResult
from covid_cxr.reliability.ood import fit_detector

CLASSES = ["covid", "normal", "viral"]


def _bundle(tmp_path):
    spec = Preprocess(size=32, channels=1, normalize="unit")
    head = HeadConfig(pooling="gap")
    torch.manual_seed(0)
    model = build_model("convnet", head, 3, image_size=32, in_chans=1).eval()
    cfg = RunConfig(name="t", preprocess=spec, model=ModelConfig(arch="convnet", head=head))
    return write_bundle(tmp_path / "bundle", model, cfg, CLASSES, spec, {}, "fp", export_onnx=False)


def test_store_load_retemper_and_assess(tmp_path):
    folder = _bundle(tmp_path)
    assert read_bundle_info(folder).ood is None  # an older bundle loads and says it has none
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.integers(0, 3, 60)
    detector = fit_detector(x, y)
    ood = OodInfo(
        format=OOD_FORMAT, threshold=float(np.quantile(detector.score(x), 0.99)), n_train=60, n_val=60
    )
    info = store_reliability(folder, ood, detector.arrays, ConformalInfo(qhat=0.5, n_val=60))
    assert OOD_NPZ in info.files and (folder / OOD_NPZ).is_file()
    load_bundle(folder, backend="torch")  # the sha256 of ood.npz checks out
    info = retemper_bundle(folder, 2.0, None)
    assert OOD_NPZ in info.files and info.ood is not None
    assert info.conformal is None  # fitted at T = 1: dropped when T changes
    rel = Reliability.from_bundle(folder, info)
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    far = np.full((2, 8), 50.0)
    out = rel.assess(probs, far, [GateResult(), GateResult(reasons=["too_small"])])
    assert [o["ood"]["flagged"] for o in out] == [True, True]
    assert out[1]["gate"]["reasons"] == ["too_small"] and all(o["abstain"] for o in out)
    near = rel.assess(probs[:1], x[:1], [GateResult()])[0]
    assert near["ood"]["flagged"] is False and near["prediction_set"] is None and not near["abstain"]


def test_a_detector_of_an_older_format_is_set_aside_and_says_so(tmp_path):
    folder = _bundle(tmp_path)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 8)), rng.integers(0, 3, 40)
    detector = fit_detector(x, y)
    old = OodInfo(threshold=1.0, n_train=40, n_val=40)  # written before formats: read as format 1
    info = store_reliability(folder, old, detector.arrays, None)
    assert info.ood is not None and info.ood.format == 1
    rel = Reliability.from_bundle(folder, info)
    assert rel.detector is None and rel.info.ood is None
    (verdict,) = rel.assess(np.array([[0.8, 0.1, 0.1]]), x[:1], [GateResult()])
    assert verdict["ood"]["flagged"] is None and "older format (1)" in verdict["ood"]["note"]
