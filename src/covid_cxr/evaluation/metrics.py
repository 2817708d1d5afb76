"""Classification metrics from class probabilities: the seeds' report, confusion counts, ROC and PR curves.

Conventions (the same in every figure and in the bootstrap):

- predictions are the argmax of the probabilities;
- classes absent from ``y_true`` are listed with support 0 and left out of the macro averages;
  their ROC curve and AUC are ``None`` (a curve needs positives and negatives);
- ``macro_auc`` is the mean of the per-class one-vs-rest AUCs (scikit-learn's ``average="macro"``);
  ``roc["macro"]`` is seed 002's macro-average curve (per-class curves interpolated on a common
  false-positive grid), whose area can differ slightly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    auc,
    average_precision_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from covid_cxr.errors import DataError


def classification_summary(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Everything the evaluation reports for integer labels `y_true` and (N, C) probabilities."""
    y, p = check_inputs(y_true, probs, classes)
    pred = p.argmax(axis=1)
    labels = list(range(len(classes)))
    cm = confusion_matrix(y, pred, labels=labels)
    present = present_classes(y, len(classes))
    roc = roc_curves(y, p, classes)
    pr = pr_curves(y, p, classes)
    per_class = _per_class(cm, classes)
    for name in classes:
        per_class[name]["roc_auc"] = roc[name]["auc"] if roc[name] else None
        per_class[name]["average_precision"] = pr[name]["average_precision"] if pr[name] else None
    return {
        "classes": list(classes),
        "n": len(y),
        "headline": headline(y, p, classes),
        "report": _report(y, pred, classes, present),
        "report_text": _report_text(y, pred, classes, present),
        "confusion_matrix": {
            "labels": list(classes),
            "counts": cm.tolist(),
            "normalized": _row_normalise(cm),
        },
        "per_class": per_class,
        "totals": {key: int(sum(per_class[c][key] for c in classes)) for key in ("tp", "fp", "tn", "fn")},
        "roc": roc,
        "pr": pr,
    }


def headline(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """The few figures quoted everywhere: n, accuracy, balanced accuracy, macro F1, macro and micro AUC."""
    y, p = check_inputs(y_true, probs, classes)
    pred = p.argmax(axis=1)
    present = present_classes(y, len(classes))
    aucs = [a for a in (class_auc(y == k, p[:, k]) for k in present) if a is not None]
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "micro_auc": class_auc(_one_hot(y, len(classes)).ravel(), p.ravel()),
    }


def roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """One-vs-rest ROC per class, micro average (all scores pooled) and seed 002's macro average."""
    onehot = _one_hot(y_true, len(classes))
    out: dict = {}
    for k, name in enumerate(classes):
        out[name] = _roc(onehot[:, k], probs[:, k])
    out["micro"] = _roc(onehot.ravel(), probs.ravel())
    curves = [out[name] for name in classes if out[name] is not None]
    out["macro"] = _macro_roc(curves) if curves else None
    return out


def pr_curves(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Precision-recall curve and average precision per class (None when absent) and micro-averaged."""
    onehot = _one_hot(y_true, len(classes))
    out: dict = {name: _pr(onehot[:, k], probs[:, k]) for k, name in enumerate(classes)}
    out["micro"] = _pr(onehot.ravel(), probs.ravel())
    aps = [out[name]["average_precision"] for name in classes if out[name] is not None]
    out["macro_average_precision"] = float(np.mean(aps)) if aps else None
    return out


def balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in `y_true` (predictions of other classes count as errors)."""
    y, pred = np.asarray(y_true), np.asarray(pred)
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def class_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of one binary problem, None without both positives and negatives."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


def present_classes(y_true: np.ndarray, num_classes: int) -> list[int]:
    """Indices of the classes that occur in `y_true`."""
    return [k for k in range(num_classes) if np.any(y_true == k)]


def check_inputs(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Validated int labels (N,) and float probabilities (N, C); DataError naming the mismatch."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise DataError(f"expected probabilities of shape (N, {len(classes)}), got {p.shape}")
    if y.ndim != 1 or len(y) != len(p) or len(y) == 0:
        raise DataError(f"expected {len(p)} labels for {len(p)} probability rows (at least 1), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"labels must be integers in 0..{len(classes) - 1}")
    return y.astype(np.int64), p


def _per_class(cm: np.ndarray, classes: Sequence[str]) -> dict:
    """One-vs-rest TP/FP/TN/FN and sensitivity, specificity, PPV, NPV (None when undefined), seed 004."""
    total = int(cm.sum())
    out = {}
    for k, name in enumerate(classes):
        tp = int(cm[k, k])
        fn = int(cm[k].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = total - tp - fn - fp
        out[name] = {
            "support": tp + fn,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn),
        }
    return out


def _report(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], present: list[int]) -> dict:
    """The seeds' classification report as a dict: per class, accuracy, macro and weighted averages."""
    labels = list(range(len(classes)))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    report: dict = {
        name: {
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(classes)
    }
    report["accuracy"] = float(accuracy_score(y, pred))
    for average in ("macro", "weighted"):
        values = precision_recall_fscore_support(y, pred, labels=present, average=average, zero_division=0)
        report[f"{average} avg"] = {
            "precision": float(values[0]),
            "recall": float(values[1]),
            "f1": float(values[2]),
            "support": len(y),
        }
    return report


def _report_text(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], present: list[int]) -> str:
    """scikit-learn's text report over the classes present; absent ones named on a last line."""
    text = classification_report(
        y, pred, labels=present, target_names=[classes[k] for k in present], zero_division=0
    )
    absent = [name for k, name in enumerate(classes) if k not in present]
    return text + (f"\nclasses absent from the data: {', '.join(absent)}\n" if absent else "")


def _roc(positive: np.ndarray, scores: np.ndarray) -> dict | None:
    """fpr, tpr and AUC of one binary problem; None without both positives and negatives."""
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = roc_curve(positive, scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(auc(fpr, tpr))}


def _macro_roc(curves: list[dict]) -> dict:
    """Seed 002: every class's tpr interpolated at the union of their fprs, averaged, and its area."""
    grid = np.unique(np.concatenate([c["fpr"] for c in curves]))
    mean_tpr = np.mean([np.interp(grid, c["fpr"], c["tpr"]) for c in curves], axis=0)
    return {"fpr": grid.tolist(), "tpr": mean_tpr.tolist(), "auc": float(auc(grid, mean_tpr))}


def _pr(positive: np.ndarray, scores: np.ndarray) -> dict | None:
    """Precision-recall curve and average precision of one binary problem; None without positives."""
    if not positive.any():
        return None
    precision, recall, _ = precision_recall_curve(positive, scores)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "average_precision": float(average_precision_score(positive, scores)),
    }


def _one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) boolean indicator matrix."""
    return np.arange(num_classes)[None, :] == y[:, None]


def _row_normalise(cm: np.ndarray) -> list[list[float]]:
    """Each row divided by its total (a row of zeros stays zeros)."""
    rows = cm.sum(axis=1, keepdims=True)
    return (cm / np.where(rows == 0, 1, rows)).tolist()


def _ratio(num: int, den: int) -> float | None:
    """num / den, or None when den is 0."""
    return num / den if den else None
