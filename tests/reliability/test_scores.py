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


def _sampled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n probability vectors over 3 classes and labels drawn from them (a calibrated model)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, np.array([rng.choice(3, p=p) for p in probs])


def test_mahalanobis_sees_off_the_training_span_with_few_training_images():
    """40 training images in 200 dimensions: the kept components cannot span everything they show."""
    rng = np.random.default_rng(4)
    basis = rng.normal(size=(10, 200))
    y = rng.integers(0, 2, 100)
    x = rng.normal(size=(100, 10)) @ basis + y[:, None] * 2.0 + np.abs(rng.normal(0, 0.1, (100, 200)))
    detector = fit_detector(x[:40], y[:40])
    t = threshold(detector.score(x[40:70]), 0.99)
    assert detector.arrays["components"].shape[0] <= 20
    assert (detector.score(x[70:]) > t).mean() <= 0.1
    other = rng.normal(size=(30, 10)) @ rng.normal(size=(10, 200))  # another subspace, same scale
    assert (detector.score(other) > t).mean() >= 0.95


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_conformal_coverage_near_target(method):
    probs, y = _sampled(4000, 1)
    qhat = fit_threshold(probs[:2000], y[:2000], 0.9, method)
    result = coverage_and_size(prediction_sets(probs[2000:], qhat, method), y[2000:])
    assert abs(result["coverage"] - 0.9) < 0.03  # SD of one split here: about 0.01
    assert 1 < result["mean_set_size"] <= 3


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_coverage_over_resplits_is_the_conformal_guarantee(method):
    """Averaged over random calibration/test splits of a pool: ceil((n + 1)(1 - a)) / (n + 1) covered."""
    probs, y = _sampled(300, 2)
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(400):
        order = rng.permutation(300)
        cal, test = order[:60], order[60:]
        qhat = fit_threshold(probs[cal], y[cal], 0.9, method)
        covered.append(coverage_and_size(prediction_sets(probs[test], qhat, method), y[test])["coverage"])
    assert np.mean(covered) == pytest.approx(55 / 61, abs=0.006)  # one rank higher gave 0.919


def test_randomised_aps_sets_are_reproducible_and_nested():
    probs, _ = _sampled(50, 3)
    sets = prediction_sets(probs, 0.7, "aps")
    assert (prediction_sets(probs[::-1], 0.7, "aps")[::-1] == sets).all()  # any order, any batch
    assert (prediction_sets(probs[7:8], 0.7, "aps") == sets[7:8]).all()
    ranks = np.argsort(np.argsort(-probs, axis=1), axis=1)
    size = sets.sum(axis=1)
    assert (sets == (ranks < size[:, None])).all()  # a set is always the k most probable classes


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
