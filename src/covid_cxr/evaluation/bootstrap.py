"""Stratified percentile bootstrap, vectorised over resamples.

A resample is represented by how many times it draws each sample: a (B, N) weight matrix. The
bootstrap is stratified: each resample draws, within every true class, as many images as the class
has, so every resample keeps the class counts of the data (the test set's composition is fixed by
design, not random). Every metric function takes ``(y_true, probs, weights)`` and returns one value
per resample row, so B resamples cost a few matrix operations rather than B scikit-learn calls. With
all weights 1 the functions give exactly the point estimates of :mod:`covid_cxr.evaluation.metrics`
and :mod:`covid_cxr.evaluation.calibration`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from covid_cxr.errors import DataError

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
    """(point, lower, upper) per metric: the (1 - alpha) percentile interval over `n` stratified resamples.

    Values undefined in a resample are ignored; a metric undefined everywhere gives ``None``. The same
    seed gives the same intervals.
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
        weights = stratified_weights(rng, y, min(chunk, n - start))
        for name, fn in metric_fns.items():
            values[name].append(fn(y, p, weights))
    ones = np.ones((1, size))
    return {
        name: _interval(fn(y, p, ones)[0], np.concatenate(values[name]), alpha)
        for name, fn in metric_fns.items()
    }


def stratified_weights(rng: np.random.Generator, y: np.ndarray, rows: int) -> np.ndarray:
    """(rows, N) draw counts of `rows` resamples, each drawing with replacement within every class of y."""
    weights = np.zeros((rows, len(y)))
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        weights[:, members] = _resample_weights(rng, rows, len(members))
    return weights


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


def weighted_ece(y: np.ndarray, p: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE per weight row, binned as reliability_bins: sum over bins of |correct - confidence| / N."""
    confidence = p.max(axis=1)
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = (p.argmax(axis=1) == y) - confidence
    per_bin = np.zeros((len(y), n_bins))
    per_bin[np.arange(len(y)), which] = gap
    return np.abs(w @ per_bin).sum(axis=1) / w.sum(axis=1)


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
