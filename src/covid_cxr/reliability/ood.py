"""Out-of-distribution scores on penultimate features: Mahalanobis (shared covariance) or kNN distance.

Mahalanobis (Lee et al. 2018) on L2-normalised features: they are projected on the training split's
leading principal components (at most half as many as training images, so some variation is always
left out); the score is the smallest squared Mahalanobis distance to a class mean under one shared
(Ledoit-Wolf) covariance, plus the squared norm of what the projection leaves out relative to its
training mean times the number of left-out components (so an image unlike anything in the training
split scores high even off the kept components). On raw features a model trained on 100 radiography-224
images per class flagged 75 % of 37 photographs, CT/MR slices, noise and text pages (noise and
textures have small feature norms); normalised 99 %. With as many components as training images
minus one nothing was left out and it flagged 41 % (30 images per class). kNN (Sun et al. 2022): one
minus the cosine similarity to the k-th nearest of a sample of L2-normalised training features. The
threshold is a quantile of the validation split's scores. Everything the score needs fits in a few
arrays (:meth:`OodDetector.arrays`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.covariance import LedoitWolf

Method = Literal["mahalanobis", "knn"]
MAX_COMPONENTS = 64
MAX_PROTOTYPES = 512
KNN_K = 5


@dataclass
class OodDetector:
    """A fitted score: `method` and its arrays; `score(features)` is higher for less familiar inputs."""

    method: Method
    arrays: dict[str, np.ndarray]

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N,) scores of (N, D) penultimate features."""
        x = np.asarray(features, dtype=np.float64)
        return _mahalanobis(x, self.arrays) if self.method == "mahalanobis" else _knn(x, self.arrays)


def fit_detector(
    features: np.ndarray, labels: np.ndarray, method: Method = "mahalanobis", seed: int = 0
) -> OodDetector:
    """Fit a detector on the training split's (N, D) features and class indices."""
    x = np.asarray(features, dtype=np.float64)
    if method == "knn":
        return OodDetector("knn", _knn_fit(x, seed))
    if method != "mahalanobis":
        raise ValueError(f"OOD method must be 'mahalanobis' or 'knn', got {method!r}")
    return OodDetector("mahalanobis", _mahalanobis_fit(x, np.asarray(labels)))


def threshold(scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of the validation scores (the 'higher' value, so that share is at or below it)."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile, method="higher"))


def _mahalanobis_fit(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    x = _unit(x)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = int(min(MAX_COMPONENTS, max(1, (s > s[0] * 1e-6).sum()), max(1, len(x) // 2)))
    components = vt[:k]
    z = (x - mean) @ components.T
    classes = np.unique(y)
    centres = np.stack([z[y == c].mean(axis=0) for c in classes])
    within = z - centres[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    left_out = max(1, x.shape[1] - k)
    residual = float(np.mean(_residual2(x, mean, components)))
    total = float(np.mean(((x - mean) ** 2).sum(axis=1)))
    scale = left_out / residual if residual > 1e-9 * total else 0.0  # nothing left out: no residual term
    return {
        "mean": mean,
        "components": components,
        "centres": centres,
        "precision": precision,
        "residual_scale": np.array([scale]),
    }


def _residual2(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    centred = x - mean
    return np.maximum((centred**2).sum(axis=1) - ((centred @ components.T) ** 2).sum(axis=1), 0.0)


def _mahalanobis(x: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    x = _unit(x)
    z = (x - a["mean"]) @ a["components"].T
    diff = z[:, None, :] - a["centres"][None, :, :]
    d2 = np.einsum("ncd,de,nce->nc", diff, a["precision"], diff).min(axis=1)
    return d2 + _residual2(x, a["mean"], a["components"]) * float(a["residual_scale"][0])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _knn_fit(x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rows = np.random.default_rng(seed).permutation(len(x))[:MAX_PROTOTYPES]
    return {"prototypes": _unit(x[np.sort(rows)]), "k": np.array([min(KNN_K, len(rows))])}


def _knn(x: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    similarity = _unit(x) @ a["prototypes"].T
    k = int(a["k"][0])
    return 1.0 - np.sort(similarity, axis=1)[:, -k]
