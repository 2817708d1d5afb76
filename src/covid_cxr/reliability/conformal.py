"""Split-conformal prediction sets (Angelopoulos & Bates 2021) from calibrated class probabilities.

LAC: the score of a class is 1 - p; APS (randomised, Romano et al. 2020): the probability mass of the
classes ranked above it plus u times its own, u uniform on [0, 1). Without u, APS over-covers (on 3
near-uniform classes 100 % for a 90 % target). u is a hash of the image's probabilities, not a draw:
the same probabilities always get the same set, alone or in any batch (a seeded generator would give
every single-image request the same u). The threshold q-hat is the ceil((n + 1)(1 - alpha))-th
smallest of the validation split's true-class scores (np.quantile 'higher' at that rank / n takes the
next one: 1/(n + 1) too much coverage), so a new exchangeable image's set holds its true class with
probability at least 1 - alpha, and at most 1 - alpha + 1/(n + 1) without ties. A set may be empty
(LAC, or APS when u is small) or hold several classes: the model is not sure.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import numpy as np

Method = Literal["lac", "aps"]


def class_scores(probs: np.ndarray, method: Method) -> np.ndarray:
    """(N, C) non-conformity score of every class."""
    p = np.asarray(probs, dtype=np.float64)
    if method == "lac":
        return 1.0 - p
    if method != "aps":
        raise ValueError(f"conformal method must be 'lac' or 'aps', got {method!r}")
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(ranked, axis=1) - ranked
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, above + tie_breaks(p)[:, None] * ranked, axis=1)
    return scores


def tie_breaks(probs: np.ndarray) -> np.ndarray:
    """(N,) pseudo-uniform numbers in [0, 1), one per row: a hash of the row's float32 probabilities."""
    rows = np.ascontiguousarray(np.asarray(probs, dtype=np.float32))
    digests = [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows]
    return np.array([int.from_bytes(d, "little") for d in digests], dtype=np.float64) / 2.0**64


def fit_threshold(probs: np.ndarray, y: np.ndarray, coverage: float, method: Method) -> float:
    """The conformal threshold q-hat on the validation split's probabilities and labels."""
    n = len(y)
    if n == 0:
        raise ValueError("conformal calibration needs at least one validation image")
    true = class_scores(probs, method)[np.arange(n), np.asarray(y)]
    rank = math.ceil((n + 1) * coverage - 1e-9)  # the rank-th smallest score, as in the guarantee
    if rank > n:
        return float("inf")  # too few images for this coverage: every set holds every class
    return float(np.sort(true)[rank - 1])


def prediction_sets(probs: np.ndarray, qhat: float, method: Method) -> np.ndarray:
    """(N, C) boolean membership: a class is in the set when its score is at most q-hat."""
    return class_scores(probs, method) <= qhat + 1e-12


def coverage_and_size(sets: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Empirical coverage, mean set size and the share of single-class sets."""
    sizes = sets.sum(axis=1)
    return {
        "coverage": float(sets[np.arange(len(y)), np.asarray(y)].mean()) if len(y) else float("nan"),
        "mean_set_size": float(sizes.mean()) if len(y) else float("nan"),
        "singleton_share": float((sizes == 1).mean()) if len(y) else float("nan"),
        "n": len(y),
    }
