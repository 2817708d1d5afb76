"""Calibration: ECE and reliability bins by hand, temperature scaling on an overconfident classifier."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from covid_cxr.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)


def test_ece_and_bins_by_hand() -> None:
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong); two bins: (0, 0.5], (0.5, 1]
    bins = reliability_bins(y, probs, n_bins=2)
    assert [b["count"] for b in bins] == [0, 4]
    assert bins[1]["confidence"] == pytest.approx(0.75) and bins[1]["accuracy"] == pytest.approx(0.5)
    assert expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.25)
    # ten bins: 0.6 -> (0.5, 0.6], 0.7 -> (0.6, 0.7], 0.8 -> (0.7, 0.8], 0.9 -> (0.8, 0.9]
    by_hand = (abs(0 - 0.6) + abs(1 - 0.7) + abs(0 - 0.8) + abs(1 - 0.9)) / 4
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(by_hand)
    assert sum(b["count"] for b in reliability_bins(y, probs, n_bins=15)) == 4


def test_apply_temperature_is_softmax_of_scaled_logits() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    assert apply_temperature(logits, 1.0) == pytest.approx(softmax(logits, axis=1))
    assert apply_temperature(logits, 2.5) == pytest.approx(softmax(logits / 2.5, axis=1))
    single = np.array([[1.5], [-0.5]])
    p = expit(single[:, 0] / 2)
    assert apply_temperature(single, 2.0, "sigmoid") == pytest.approx(np.stack([1 - p, p], axis=1))


def test_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(4000, 3))
    y = np.array([rng.choice(3, p=row) for row in softmax(true_logits, axis=1)])
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_temperature_scaling_repairs_an_overconfident_classifier() -> None:
    x, y = make_classification(n_samples=1500, n_features=10, n_informative=5, n_classes=3, random_state=0)
    model = LogisticRegression(max_iter=1000).fit(x[:500], y[:500])
    val_logits, test_logits = 5 * model.decision_function(x[500:1000]), 5 * model.decision_function(x[1000:])
    temperature = fit_temperature(val_logits, y[500:1000])
    assert temperature > 1
    before, after = apply_temperature(test_logits, 1.0), apply_temperature(test_logits, temperature)
    y_test = y[1000:]
    assert expected_calibration_error(y_test, after) < 0.5 * expected_calibration_error(y_test, before)
    assert negative_log_likelihood(y_test, after) < negative_log_likelihood(y_test, before)
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()
