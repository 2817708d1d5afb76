"""Headline intervals: Wilson for proportions, posterior for balanced accuracy/F1, stratified bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, norm
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from covid_cxr.evaluation.bootstrap import bootstrap_ci, stratified_weights, weighted_auc, weighted_ece
from covid_cxr.evaluation.calibration import expected_calibration_error
from covid_cxr.evaluation.intervals import (
    BASIC_BOOTSTRAP,
    BOOTSTRAP,
    METHODS,
    POSTERIOR,
    WILSON,
    headline_intervals,
    wilson,
)

CLASSES = ["covid", "normal", "viral"]


def _random_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(probs, 2)


def test_a_perfect_model_on_60_images_gets_no_zero_width_interval() -> None:
    y = np.repeat([0, 1, 2], 20)
    values = headline_intervals(y, np.eye(3)[y], CLASSES, n_resamples=500)
    accuracy = values["accuracy"]
    assert (accuracy["point"], accuracy["upper"]) == (1.0, 1.0)
    assert accuracy["lower"] == pytest.approx(60 / (60 + norm.ppf(0.975) ** 2))  # 0.940
    assert len(values) == 5 + 5 * 3  # accuracy, balanced accuracy, macro F1, macro AUC, ECE; 5 per class
    for name, v in values.items():
        assert v["lower"] <= v["point"] <= v["upper"] and v["upper"] - v["lower"] > 0.01, name
        assert v["method"] in METHODS
    assert values["ece"]["upper"] == pytest.approx(1 - accuracy["lower"])  # confidence 1, accuracy >= 0.94


def test_point_estimates_equal_the_metrics_and_are_bracketed() -> None:
    y, p = _random_problem(300, seed=1)
    values = headline_intervals(y, p, CLASSES, n_resamples=300, seed=0)
    pred = p.argmax(axis=1)
    assert values["accuracy"]["point"] == pytest.approx(np.mean(pred == y))
    assert values["balanced_accuracy"]["point"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert values["macro_f1"]["point"] == pytest.approx(f1_score(y, pred, average="macro"))
    aucs = [roc_auc_score(y == k, p[:, k]) for k in range(3)]
    assert values["macro_auc"]["point"] == pytest.approx(np.mean(aucs))
    assert values["ece"]["point"] == pytest.approx(expected_calibration_error(y, p, 15))
    cm = confusion_matrix(y, pred)
    for k, name in enumerate(CLASSES):
        tp, fn, fp = cm[k, k], cm[k].sum() - cm[k, k], cm[:, k].sum() - cm[k, k]
        tn = len(y) - tp - fn - fp
        assert values[f"auc[{name}]"]["point"] == pytest.approx(aucs[k])
        for figure, expected in (
            ("sensitivity", tp / (tp + fn)),
            ("ppv", tp / (tp + fp)),
            ("npv", tn / (tn + fn)),
        ):
            assert values[f"{figure}[{name}]"]["point"] == pytest.approx(expected)
            assert values[f"{figure}[{name}]"]["method"] == WILSON
    assert values["macro_f1"]["method"] == POSTERIOR and values["macro_auc"]["method"] == BOOTSTRAP
    assert values["ece"]["method"] == BASIC_BOOTSTRAP
    for name, v in values.items():
        assert v["lower"] <= v["point"] <= v["upper"], name


def test_intervals_are_reproducible_for_a_seed() -> None:
    y, p = _random_problem(200, seed=4)
    first = headline_intervals(y, p, CLASSES, n_resamples=200, seed=7)
    assert headline_intervals(y, p, CLASSES, n_resamples=200, seed=7) == first
    other = headline_intervals(y, p, CLASSES, n_resamples=200, seed=8)
    assert other["accuracy"] == first["accuracy"]  # closed form
    assert other["macro_auc"]["lower"] != first["macro_auc"]["lower"]


def test_a_class_without_predictions_has_no_ppv_and_an_absent_class_no_figures() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([[0.9, 0.05, 0.05]] * 3 + [[0.6, 0.3, 0.1]] + [[0.1, 0.8, 0.1]] * 2)
    values = headline_intervals(y, p, CLASSES, n_resamples=100)
    assert "ppv[normal]" in values and "sensitivity[viral]" not in values and "auc[viral]" not in values
    p[:, 1] = 0.0
    assert "ppv[normal]" not in headline_intervals(y, p, CLASSES, n_resamples=100)


def test_wilson_covers_a_proportion_about_95_percent_of_the_time() -> None:
    """Exact coverage (summed over the binomial distribution) at n = 60, averaged over true proportions."""
    bounds = np.array([(wilson(k, 60)["lower"], wilson(k, 60)["upper"]) for k in range(61)])
    coverage = []
    for truth in np.linspace(0.05, 0.99, 48):
        inside = (bounds[:, 0] <= truth) & (truth <= bounds[:, 1])
        coverage.append(binom.pmf(np.arange(61), 60, truth) @ inside)
    assert 0.935 <= np.mean(coverage) <= 0.965
    assert min(coverage) >= 0.85


def test_stratified_bootstrap_auc_covers_the_true_auc() -> None:
    """Binormal scores (shift 1.5, AUC = Phi(1.5 / sqrt 2) = 0.856), 40 positives and 60 negatives."""
    rng = np.random.default_rng(0)
    truth, y = norm.cdf(1.5 / np.sqrt(2)), np.r_[np.ones(40, int), np.zeros(60, int)]
    hits = 0
    for trial in range(150):
        scores = rng.normal(size=100) + 1.5 * y
        fns = {"auc": lambda y, p, w: weighted_auc(y == 1, p[:, 0], w)}
        _, lo, hi = bootstrap_ci(y, scores[:, None], fns, n=300, seed=trial)["auc"]
        hits += lo <= truth <= hi
    assert 0.88 <= hits / 150 <= 0.99


def test_posterior_balanced_accuracy_covers_the_true_value() -> None:
    """A simulated 3-class classifier with recalls 0.9, 0.75, 0.6 on 30 images per class."""
    rng = np.random.default_rng(1)
    recall = np.array([0.9, 0.75, 0.6])
    y = np.repeat([0, 1, 2], 30)
    hits = 0
    for trial in range(100):
        wrong = (y + rng.integers(1, 3, len(y))) % 3
        pred = np.where(rng.random(len(y)) < recall[y], y, wrong)
        v = headline_intervals(y, np.eye(3)[pred], CLASSES, n_resamples=200, seed=trial)["balanced_accuracy"]
        hits += v["lower"] <= recall.mean() <= v["upper"]
    assert 0.88 <= hits / 100 <= 0.99


def test_ece_interval_covers_the_true_calibration_error() -> None:
    """Confidence U(0.4, 1), accuracy 0.05 below it in every bin: the true (binned) ECE is 0.05."""
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(50):
        y, conf = rng.integers(0, 3, 300), rng.uniform(0.4, 1.0, 300)
        correct = rng.random(300) < conf - 0.05
        pred = np.where(correct, y, (y + rng.integers(1, 3, 300)) % 3)
        probs = np.tile(((1 - conf) / 2)[:, None], (1, 3))
        probs[np.arange(300), pred] = conf
        ece = headline_intervals(y, probs, CLASSES, n_resamples=200, seed=trial)["ece"]
        hits += ece["lower"] <= 0.05 <= ece["upper"]
    assert hits / 50 >= 0.8  # measured 0.93 over 100 sets; a percentile bootstrap covers it 0.28


def test_stratified_resamples_keep_the_class_counts() -> None:
    y = np.array([0] * 7 + [1] * 3 + [2] * 12)
    rng = np.random.default_rng(2)
    shuffled = rng.permutation(y)
    weights = stratified_weights(rng, shuffled, 50)
    for k, count in ((0, 7), (1, 3), (2, 12)):
        assert np.all(weights[:, shuffled == k].sum(axis=1) == count)
    assert len({tuple(row) for row in weights}) > 40  # the resamples differ


def test_weighted_ece_equals_the_ece_of_the_repeated_sample() -> None:
    y, p = _random_problem(80, seed=5)
    counts = np.random.default_rng(6).integers(0, 4, size=(4, 80)).astype(float)
    for row, value in zip(counts.astype(int), weighted_ece(y, p, counts, 15), strict=True):
        assert value == pytest.approx(
            expected_calibration_error(np.repeat(y, row), np.repeat(p, row, axis=0), 15)
        )
