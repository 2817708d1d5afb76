"""Split-conformal prediction sets (Angelopoulos & Bates 2021) from calibrated class probabilities.

LAC: the score of a class is 1 - p; APS: the probability mass of the classes ranked above it plus its
own (not randomised, so conservative: on 3 near-uniform classes it covered 100 % for a 90 %
target). The threshold is the ceil((n + 1)(1 - alpha)) / n quantile of the validation
split's true-class scores, so a new exchangeable image's set holds its true class with probability
at least 1 - alpha. A set may be empty (LAC) or hold several classes: the model is not sure.
"""

from __future__ import annotations

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
    cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def fit_threshold(probs: np.ndarray, y: np.ndarray, coverage: float, method: Method) -> float:
    """The conformal threshold q-hat on the validation split's probabilities and labels."""
    n = len(y)
    if n == 0:
        raise ValueError("conformal calibration needs at least one validation image")
    true = class_scores(probs, method)[np.arange(n), np.asarray(y)]
    level = math.ceil((n + 1) * coverage) / n
    if level > 1:
        return float("inf")  # too few images for this coverage: every set holds every class
    return float(np.quantile(true, level, method="higher"))


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
