"""Metrics and the bootstrap's weighted AUC, checked against scikit-learn and hand counts on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from covid_cxr.errors import DataError
from covid_cxr.evaluation.bootstrap import weighted_auc
from covid_cxr.evaluation.metrics import classification_summary

CLASSES = ["covid", "normal", "viral"]
Y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.5, 0.1, 0.4],
        [0.2, 0.6, 0.2],
        [0.1, 0.8, 0.1],
        [0.3, 0.3, 0.4],
        [0.1, 0.1, 0.8],
        [0.2, 0.2, 0.6],
        [0.6, 0.1, 0.3],
        [0.3, 0.3, 0.4],
    ]
)


def _random_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, np.round(probs, 2)  # rounding makes ties, which AUC must count as half


def test_report_matches_scikit_learn() -> None:
    summary = classification_summary(Y, P, CLASSES)
    pred = P.argmax(axis=1)
    expected = classification_report(Y, pred, target_names=CLASSES, output_dict=True, zero_division=0)
    for name in [*CLASSES, "macro avg", "weighted avg"]:
        got = summary["report"][name]
        assert got["precision"] == pytest.approx(expected[name]["precision"])
        assert got["recall"] == pytest.approx(expected[name]["recall"])
        assert got["f1"] == pytest.approx(expected[name]["f1-score"])
        assert got["support"] == expected[name]["support"]
    assert summary["report"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["report_text"] == classification_report(Y, pred, target_names=CLASSES, zero_division=0)


def test_confusion_counts_and_rates_match_hand_counts() -> None:
    summary = classification_summary(Y, P, CLASSES)
    # predictions: 0 0 1 | 1 2 | 2 2 0 2 (hand-derived from P)
    assert summary["confusion_matrix"]["counts"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert summary["confusion_matrix"]["normalized"][1] == pytest.approx([0.0, 0.5, 0.5])
    covid = summary["per_class"]["covid"]
    assert (covid["tp"], covid["fn"], covid["fp"], covid["tn"]) == (2, 1, 1, 5)
    assert covid["sensitivity"] == pytest.approx(2 / 3)
    assert covid["specificity"] == pytest.approx(5 / 6)
    assert covid["ppv"] == pytest.approx(2 / 3)
    assert covid["npv"] == pytest.approx(5 / 6)
    viral = summary["per_class"]["viral"]
    assert (viral["tp"], viral["fn"], viral["fp"], viral["tn"]) == (3, 1, 1, 4)
    # seed 004's totals: TP = correct, FP = FN = wrong, TN = N (C - 1) - wrong
    assert summary["totals"] == {"tp": 6, "fp": 3, "tn": 15, "fn": 3}


def test_roc_and_pr_match_scikit_learn() -> None:
    summary = classification_summary(Y, P, CLASSES)
    onehot = np.eye(3, dtype=bool)[Y]
    for k, name in enumerate(CLASSES):
        assert summary["roc"][name]["auc"] == pytest.approx(roc_auc_score(onehot[:, k], P[:, k]))
        assert summary["per_class"][name]["average_precision"] == pytest.approx(
            average_precision_score(onehot[:, k], P[:, k])
        )
    assert summary["roc"]["micro"]["auc"] == pytest.approx(roc_auc_score(onehot.ravel(), P.ravel()))
    headline = summary["headline"]
    assert headline["macro_auc"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert headline["macro_f1"] == pytest.approx(f1_score(Y, P.argmax(axis=1), average="macro"))


def test_macro_roc_curve_is_seed_002s_interpolated_average() -> None:
    onehot = np.eye(3, dtype=bool)[Y]
    curves = [roc_curve(onehot[:, k], P[:, k])[:2] for k in range(3)]
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    mean_tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)
    macro = classification_summary(Y, P, CLASSES)["roc"]["macro"]
    assert macro["fpr"] == pytest.approx(grid.tolist())
    assert macro["tpr"] == pytest.approx(mean_tpr.tolist())
    assert macro["auc"] == pytest.approx(np.trapezoid(mean_tpr, grid))


def test_a_class_absent_from_the_labels_gets_none_not_a_crash() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1]])
    summary = classification_summary(y, p, CLASSES)
    assert summary["roc"]["viral"] is None and summary["pr"]["viral"] is None
    assert summary["per_class"]["viral"]["roc_auc"] is None
    assert summary["per_class"]["viral"]["sensitivity"] is None
    assert summary["report"]["viral"]["support"] == 0
    pred = p.argmax(axis=1)
    assert summary["headline"]["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1], average="macro"))
    assert summary["headline"]["macro_auc"] == pytest.approx(
        np.mean([roc_auc_score(y == 0, p[:, 0]), roc_auc_score(y == 1, p[:, 1])])
    )
    assert "classes absent from the data: viral" in summary["report_text"]


@pytest.mark.parametrize(
    ("y", "p"),
    [(Y[:3], P), (Y, P[:, :2]), (Y + 5, P), (np.array([]), np.zeros((0, 3)))],
)
def test_bad_inputs_raise_a_data_error(y: np.ndarray, p: np.ndarray) -> None:
    with pytest.raises(DataError):
        classification_summary(y, p, CLASSES)


def test_weighted_auc_equals_the_auc_of_the_repeated_sample() -> None:
    y, p = _random_problem(60, seed=2)
    counts = np.random.default_rng(3).integers(0, 4, size=(5, 60)).astype(float)
    got = weighted_auc(y == 1, p[:, 1], counts)
    for row, value in zip(counts.astype(int), got, strict=True):
        assert value == pytest.approx(roc_auc_score(np.repeat(y == 1, row), np.repeat(p[:, 1], row)))
