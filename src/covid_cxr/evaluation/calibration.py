"""Calibration: reliability diagram data, expected calibration error, and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted to minimise the
negative log-likelihood on the validation split; T > 1 softens an overconfident model. Accuracy is
unchanged (the argmax does not move). The probabilities are those the bundle serves:
:class:`covid_cxr.predictor.Probabilities` (softmax, or sigmoid for a sigmoid head).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from covid_cxr.errors import DataError
from covid_cxr.predictor import Probabilities

T_BOUNDS = (0.05, 20.0)  # the search range of the temperature
_EPS = 1e-12


def reliability_bins(y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Top-label confidence in `n_bins` equal-width bins (lo, hi]: count, mean confidence, accuracy."""
    y, p = _check(y_true, probs)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        bins.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else None,
                "accuracy": float(correct[inside].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over the reliability bins."""
    bins = reliability_bins(y_true, probs, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / total)


def apply_temperature(logits: np.ndarray, temperature: float, output: str = "softmax") -> np.ndarray:
    """(N, C) probabilities from (N, C) logits (or (N, 1) for a two-class sigmoid head) at temperature T."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise DataError(f"expected logits of shape (N, C), got {z.shape}")
    num_classes = 2 if z.shape[1] == 1 else z.shape[1]
    module = Probabilities(nn.Identity(), num_classes, temperature, output)
    with torch.inference_mode():
        return module(torch.from_numpy(z)).numpy()


def negative_log_likelihood(y_true: Sequence[int], probs: np.ndarray) -> float:
    """Mean -log p(true class); for independent sigmoid outputs, the mean binary cross-entropy."""
    y, p = _check(y_true, probs)
    p = np.clip(p, _EPS, 1 - _EPS)
    if np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        return float(-np.log(p[np.arange(len(y)), y]).mean())
    onehot = np.arange(p.shape[1])[None, :] == y[:, None]
    return float(-np.where(onehot, np.log(p), np.log(1 - p)).mean())


def fit_temperature(logits: np.ndarray, y_true: Sequence[int], output: str = "softmax") -> float:
    """The T in [0.05, 20] minimising the NLL of apply_temperature(logits, T) (bounded search on log T)."""
    y = np.asarray(y_true)
    if len(y) != len(logits) or len(y) == 0:
        raise DataError(f"fit_temperature needs one label per logit row: {len(y)} labels, {len(logits)} rows")

    def loss(log_t: float) -> float:
        return negative_log_likelihood(y, apply_temperature(logits, float(np.exp(log_t)), output))

    bounds = (np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1]))
    result = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def _check(y_true: Sequence[int], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Int labels and float (N, C) probabilities of matching length."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise DataError(f"expected (N, C) probabilities and N labels (N >= 1), got {p.shape} and {y.shape}")
    return y, p
