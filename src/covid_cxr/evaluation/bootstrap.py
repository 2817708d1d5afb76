"""Percentile bootstrap confidence intervals, vectorised over resamples.

A resample is represented by how many times it draws each sample: a (B, N) weight matrix. Every
metric function takes ``(y_true, probs, weights)`` and returns one value per resample row, so B
resamples cost a few matrix operations rather than B scikit-learn calls. With all weights 1 the
functions give exactly the point estimates of :mod:`covid_cxr.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from covid_cxr.errors import DataError
from covid_cxr.evaluation.metrics import check_inputs, present_classes

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Interval = tuple[float | None, float | None, float | None]

_CHUNK_CELLS = 2_000_000  # resample rows x samples held in memory at once


def bootstrap_ci(
    y_true: Sequence[int],
    probs: np.ndarray,
    metric_fns: dict[str, MetricFn],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """(point, lower, upper) per metric: the (1 - alpha) percentile interval over `n` resamples.

    Values undefined in a resample (e.g. an AUC without positives) are ignored; a metric undefined
    everywhere gives ``None``. The same seed gives the same intervals.
    """
    if n < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    size = len(y)
    if size == 0 or len(p) != size:
        raise DataError(
            f"bootstrap needs one label per probability row (at least 1): {size} labels, {len(p)} rows"
        )
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // size)
    values: dict[str, list[np.ndarray]] = {name: [] for name in metric_fns}
    for start in range(0, n, chunk):
        weights = _resample_weights(rng, min(chunk, n - start), size)
        for name, fn in metric_fns.items():
            values[name].append(fn(y, p, weights))
    ones = np.ones((1, size))
    return {
        name: _interval(fn(y, p, ones)[0], np.concatenate(values[name]), alpha)
        for name, fn in metric_fns.items()
    }


def headline_metric_fns(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, MetricFn]:
    """accuracy, macro_f1, macro_auc and sensitivity[c] / specificity[c] for every class present."""
    y, _ = check_inputs(y_true, probs, classes)
    present = present_classes(y, len(classes))
    fns: dict[str, MetricFn] = {
        "accuracy": accuracy,
        "macro_f1": lambda y, p, w: macro_f1(y, p, w, present),
        "macro_auc": lambda y, p, w: macro_auc(y, p, w, present),
    }
    for k in present:
        fns[f"sensitivity[{classes[k]}]"] = lambda y, p, w, k=k: sensitivity(y, p, w, k)
        fns[f"specificity[{classes[k]}]"] = lambda y, p, w, k=k: specificity(y, p, w, k)
    return fns


def accuracy(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted share of argmax predictions equal to the label."""
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    return (w @ correct) / w.sum(axis=1)


def sensitivity(y: np.ndarray, p: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Recall of class k: TP / (TP + FN), NaN without positives."""
    cm = confusion(y, p, w)
    tp, fn = cm[:, k, k], cm[:, k, :].sum(axis=1) - cm[:, k, k]
    return _divide(tp, tp + fn)


def specificity(y: np.ndarray, p: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """TN / (TN + FP) of class k, NaN without negatives."""
    cm = confusion(y, p, w)
    negatives = cm.sum(axis=(1, 2)) - cm[:, k, :].sum(axis=1)
    fp = cm[:, :, k].sum(axis=1) - cm[:, k, k]
    return _divide(negatives - fp, negatives)


def macro_f1(y: np.ndarray, p: np.ndarray, w: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mean F1 = 2TP / (2TP + FP + FN) over `classes` (0 where a class has no TP, FP or FN)."""
    cm = confusion(y, p, w)
    f1 = []
    for k in classes:
        tp = cm[:, k, k]
        fp_fn = cm[:, :, k].sum(axis=1) + cm[:, k, :].sum(axis=1) - 2 * tp
        f1.append(np.nan_to_num(_divide(2 * tp, 2 * tp + fp_fn)))
    return np.mean(f1, axis=0)


def macro_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mean one-vs-rest ROC AUC over `classes`, skipping a class undefined in a resample."""
    aucs = np.stack([weighted_auc(y == k, p[:, k], w) for k in classes])
    valid = np.isfinite(aucs)
    return _divide(np.where(valid, aucs, 0.0).sum(axis=0), valid.sum(axis=0))


def weighted_auc(positive: np.ndarray, scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC per weight row (Mann-Whitney with ties counted half); NaN without positives or negatives."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, pos, weights = scores[order], np.asarray(positive, dtype=bool)[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos_w = np.add.reduceat(weights * pos, starts, axis=1)
    neg_w = np.add.reduceat(weights * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    return _divide(wins, pos_w.sum(axis=1) * neg_w.sum(axis=1))


def confusion(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted confusion matrices (B, C, C): rows true class, columns predicted class."""
    c = p.shape[1]
    cell = y * c + p.argmax(axis=1)
    indicator = (cell[:, None] == np.arange(c * c)[None, :]).astype(np.float64)
    return (w @ indicator).reshape(len(w), c, c)


def _resample_weights(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """(rows, size) draw counts of `rows` resamples with replacement."""
    idx = rng.integers(0, size, size=(rows, size)) + (np.arange(rows) * size)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * size).reshape(rows, size).astype(np.float64)


def _interval(point: float, samples: np.ndarray, alpha: float) -> Interval:
    """Point estimate and percentile bounds, None where undefined."""
    finite = samples[np.isfinite(samples)]
    point_value = float(point) if np.isfinite(point) else None
    if finite.size == 0:
        return point_value, None, None
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point_value, float(lo), float(hi)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
