"""OOD scores, conformal sets and the input gate on synthetic arrays (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from covid_cxr.reliability.conformal import coverage_and_size, fit_threshold, prediction_sets
from covid_cxr.reliability.gate import check_image
from covid_cxr.reliability.ood import fit_detector, threshold


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_ood_flags_far_features_and_few_in_distribution(method):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 20))
    y = rng.integers(0, 3, 900)
    x = centres[y] + rng.normal(0, 1, (900, 20))
    detector = fit_detector(x[:600], y[:600], method)
    t = threshold(detector.score(x[600:750]), 0.99)
    assert (detector.score(x[750:]) > t).mean() <= 0.05
    far = rng.normal(0, 1, (100, 20)) + 12
    assert (detector.score(far) > t).mean() >= 0.95


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_conformal_coverage_near_target(method):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (4000, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in probs])
    qhat = fit_threshold(probs[:2000], y[:2000], 0.9, method)
    result = coverage_and_size(prediction_sets(probs[2000:], qhat, method), y[2000:])
    if method == "lac":  # exact up to sampling; APS without randomisation is conservative (ties at 1)
        assert abs(result["coverage"] - 0.9) < 0.03
    assert result["coverage"] >= 0.87
    assert 1 < result["mean_set_size"] <= 3


def test_gate_reason_codes():
    rng = np.random.default_rng(2)
    chest = np.full((256, 256), 60, np.uint8)
    chest[:, 100:156] = 200  # bright mediastinum between dark lungs
    assert check_image(chest, 224).reasons == []
    assert check_image(255 - chest, 224).reasons == ["likely_inverted"]
    assert "too_small" in check_image(chest[:64, :64], 224).reasons
    colour = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert "not_greyscale" in check_image(colour, 224).reasons
    assert check_image(chest, 224).unavailable == ["not_frontal_chest"]


def test_frontal_check_needs_two_lungs(shared_data):
    from covid_cxr.data.images import load_image

    chest = load_image(sorted((shared_data / "lungs-256" / "images").iterdir())[0])
    noise = np.random.default_rng(3).integers(0, 256, (256, 256), dtype=np.uint8)
    assert check_image(chest, 224, frontal=True).reasons == []
    assert check_image(chest, 224, frontal=True).unavailable == []
    assert check_image(noise, 224, frontal=True).reasons == ["not_frontal_chest"]
