"""Every Prediction carries the gate, the OOD verdict, the conformal set and abstain, on both backends."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covid_cxr.bundle import load_bundle, store_reliability, write_bundle
from covid_cxr.bundle_info import ConformalInfo, OodInfo
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.preprocess import normalize, prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.data.synthetic import render_phantom
from covid_cxr.models.zoo import build_model
from covid_cxr.reliability.ood import fit_detector, threshold

CLASSES = ["covid", "normal", "viral"]
SPEC = Preprocess(size=64, channels=1, normalize="unit")
KEYS = {"path", "probabilities", "predicted", "prediction_set", "ood", "gate", "abstain", "abstain_reasons"}


def _phantoms(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_phantom(CLASSES[i % 3], rng, 128)[0] for i in range(n)]


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random convnet bundle with model.onnx and no OOD detector or conformal record (an older bundle)."""
    torch.manual_seed(0)
    head = HeadConfig(pooling="gap")
    model = build_model("convnet", head, 3, image_size=SPEC.size, in_chans=1).eval()
    cfg = RunConfig(name="rel", preprocess=SPEC, model=ModelConfig(arch="convnet", head=head))
    return write_bundle(tmp_path_factory.mktemp("plain") / "bundle", model, cfg, CLASSES, SPEC, {}, "fp")


@pytest.fixture(scope="module")
def bundle(plain_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same bundle with a detector fitted on 60 phantoms' features and a conformal q-hat of 0.5."""
    folder = tmp_path_factory.mktemp("fitted") / "bundle"
    predictor = load_bundle(plain_bundle, backend="torch")
    x = normalize(np.stack([prepare(im, SPEC) for im in _phantoms(90, 0)]), SPEC)
    _, features = predictor.predict_outputs(x)
    detector = fit_detector(features[:60], np.arange(60) % 3)
    ood = OodInfo(threshold=threshold(detector.score(features[60:]), 0.99), n_train=60, n_val=30)
    shutil.copytree(plain_bundle, folder)
    store_reliability(folder, ood, detector.arrays, ConformalInfo(qhat=0.5, n_val=30))
    return folder


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_phantoms_pass_and_noise_abstains(bundle: Path, backend: str) -> None:
    predictor = load_bundle(bundle, backend=backend)
    assert predictor.backend == backend
    noise = np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)
    results = predictor.predict([*_phantoms(6, 5), noise])
    for result in results:
        assert set(result.to_dict()) == KEYS
        assert result.prediction_set == [c for c in CLASSES if result.probabilities[c] >= 0.5]
        assert result.ood["threshold"] == pytest.approx(predictor.bundle_info.ood.threshold)
        assert result.gate["unavailable"] == []  # the frontal check ran
    familiar = results[:6]
    assert sum(r.ood["flagged"] for r in familiar) <= 1
    assert all(r.gate["reasons"] == [] for r in familiar)  # the segmenter finds the phantoms' lungs
    assert results[-1].ood["flagged"] and results[-1].abstain
    assert {"not_frontal_chest", "ood"} <= set(results[-1].abstain_reasons)
    for r in results:
        wanted = bool(r.gate["reasons"] or r.ood["flagged"] or len(r.prediction_set) != 1)
        assert r.abstain is wanted


def test_backends_give_the_same_verdicts(bundle: Path) -> None:
    images = [*_phantoms(4, 9), np.full((128, 128), 128, np.uint8)]
    a, b = (load_bundle(bundle, backend=k).predict(images) for k in ("onnx", "torch"))
    for x, y in zip(a, b, strict=True):
        assert x.ood["score"] == pytest.approx(y.ood["score"], rel=1e-3)
        assert (x.prediction_set, x.abstain_reasons) == (y.prediction_set, y.abstain_reasons)


def test_predict_files_carry_the_verdicts(bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    rgb = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    (bad := tmp_path / "bad.png").write_bytes(b"not a png")
    results, failures = load_bundle(bundle).predict_files([path, bad])
    assert list(failures) == [str(bad)]
    assert results[0].path == str(path) and "not_greyscale" in results[0].gate["reasons"]
    assert results[0].abstain


def test_an_older_bundle_says_it_has_no_detector(plain_bundle: Path) -> None:
    predictor = load_bundle(plain_bundle)
    predictor.frontal_check = False
    result = predictor.predict(_phantoms(1, 3)[0])
    assert result.ood == {
        "score": None,
        "threshold": None,
        "flagged": None,
        "note": "bundle has no OOD detector",
    }
    assert result.prediction_set is None
    assert result.gate == {"reasons": [], "unavailable": ["not_frontal_chest"]}
    assert result.abstain is False and result.abstain_reasons == []
