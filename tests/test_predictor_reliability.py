"""Every Prediction carries the gate, the OOD verdict, the conformal set and abstain, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_cxr.bundle import load_bundle
from tests.reliability.bundles import CLASSES, phantoms
from tests.test_cli import run_cli

KEYS = {"path", "probabilities", "predicted", "prediction_set", "ood", "gate", "abstain", "abstain_reasons"}


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_phantoms_pass_and_noise_abstains(reliability_bundle: Path, backend: str) -> None:
    predictor = load_bundle(reliability_bundle, backend=backend)
    assert predictor.backend == backend
    noise = np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)
    results = predictor.predict([*phantoms(6, 5), noise])
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


def test_backends_give_the_same_verdicts(reliability_bundle: Path) -> None:
    images = [*phantoms(4, 9), np.full((128, 128), 128, np.uint8)]
    a, b = (load_bundle(reliability_bundle, backend=k).predict(images) for k in ("onnx", "torch"))
    for x, y in zip(a, b, strict=True):
        assert x.ood["score"] == pytest.approx(y.ood["score"], rel=1e-3)
        assert (x.prediction_set, x.abstain_reasons) == (y.prediction_set, y.abstain_reasons)


def test_predict_files_carry_the_verdicts(reliability_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    rgb = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    (bad := tmp_path / "bad.png").write_bytes(b"not a png")
    results, failures = load_bundle(reliability_bundle).predict_files([path, bad])
    assert list(failures) == [str(bad)]
    assert results[0].path == str(path) and "not_greyscale" in results[0].gate["reasons"]
    assert results[0].abstain


def test_an_older_bundle_says_it_has_no_detector(plain_reliability_bundle: Path) -> None:
    predictor = load_bundle(plain_reliability_bundle)
    predictor.frontal_check = False
    result = predictor.predict(phantoms(1, 3)[0])
    assert result.ood == {
        "score": None,
        "threshold": None,
        "flagged": None,
        "note": "bundle has no OOD detector",
    }
    assert result.prediction_set is None
    assert result.gate == {"reasons": [], "unavailable": ["not_frontal_chest"]}
    assert result.abstain is False and result.abstain_reasons == []


def test_cli_predict_prints_the_verdict(
    reliability_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (128, 128), dtype=np.uint8)).save(noise)
    phantom = tmp_path / "phantom.png"
    Image.fromarray(phantoms(1, 11)[0]).save(phantom)
    code, out, _ = run_cli(["predict", reliability_bundle, phantom, noise, "--json"], capsys)
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert code == 0
    assert rows["noise.png"]["abstain"] is True and "ood" in rows["noise.png"]["abstain_reasons"]
    assert rows["phantom.png"]["gate"] == {"reasons": [], "unavailable": []}
    assert set(rows["phantom.png"]) == KEYS
    code, out, _ = run_cli(["predict", reliability_bundle, noise], capsys)
    assert "abstain" in out and "ok" not in out
