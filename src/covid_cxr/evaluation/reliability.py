"""Reliability on an evaluated dataset: conformal coverage and set size, OOD flag, gate and abstain rates.

Every image is assessed as a served prediction is (:class:`covid_cxr.reliability.assess.Reliability`):
its prediction set at the bundle's q-hat and temperature, its OOD score on the head's pooled features
(captured by :func:`pooled_features` in the forward pass that gives the logits) and the input gate,
whose frontal-chest check reads the lung mask evaluate segments once per image. Coverage, mean set
size and the singleton and empty-set shares count the images of the model's classes (a set cannot
hold a class the model lacks); the OOD, gate and abstain rates count every evaluated image.
Proportions carry 95 % Wilson intervals. In predictions.csv an empty ``prediction_set`` cell is an
empty set, or no set at all where the bundle has no conformal record (metrics.json says which).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from covid_cxr.bundle_info import BundleInfo, ConformalInfo, OodInfo
from covid_cxr.evaluation.intervals import wilson
from covid_cxr.reliability.assess import Reliability
from covid_cxr.reliability.gate import REASONS, GateResult

LEVEL = 0.95
REFIT = "run covid-cxr reliability RUN"


@contextmanager
def pooled_features(model: nn.Module) -> Iterator[list[np.ndarray]]:
    """Collect the head's pooled features (those the OOD detector was fitted on) on each forward."""
    captured: list[np.ndarray] = []

    def keep(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured.append(output.detach().flatten(1).float().cpu().numpy())

    handle = model.head.pool.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def dataset_reliability(
    reliability: Reliability,
    probs: np.ndarray,
    features: np.ndarray,
    gates: Sequence[GateResult],
    labels: np.ndarray,
    y: np.ndarray,
) -> tuple[dict, list[dict[str, Any]]]:
    """(metrics.json's ``reliability``, the per-image assessment) of every evaluated image.

    `reliability` is the bundle's (``Predictor.reliability``); `labels` are the data's labels and `y`
    the model's class index of each image (-1: a class it lacks).
    """
    assessed = reliability.assess(probs, features, list(gates))
    return summarise(reliability.info, assessed, labels, y), assessed


def summarise(info: BundleInfo, assessed: list[dict[str, Any]], labels: np.ndarray, y: np.ndarray) -> dict:
    """The reliability section: available/note, conformal, ood, gate and abstain figures."""
    parts = (("OOD detector", info.ood), ("conformal sets", info.conformal))
    lacks = [what for what, record in parts if record is None]
    return {
        "available": not lacks,
        "note": f"not available (bundle has no {' / '.join(lacks)}; {REFIT})" if lacks else None,
        "level": LEVEL,
        "conformal": _conformal(info.conformal, info.class_names, assessed, y) if info.conformal else None,
        "ood": _ood(info.ood, assessed, labels, y) if info.ood else None,
        "gate": _gate(assessed),
        "abstain": _abstain(assessed),
    }


def prediction_columns(assessed: list[dict[str, Any]]) -> dict[str, list]:
    """predictions.csv's columns: prediction_set and gate ('|'-joined), ood_score, ood_flagged, abstain."""
    return {
        "prediction_set": [_joined(a["prediction_set"]) for a in assessed],
        "ood_score": [a["ood"]["score"] for a in assessed],
        "ood_flagged": [a["ood"]["flagged"] for a in assessed],
        "gate": [_joined(a["gate"]["reasons"]) for a in assessed],
        "abstain": [a["abstain"] for a in assessed],
        "abstain_reasons": [_joined(a["abstain_reasons"]) for a in assessed],
    }


def _joined(names: list[str] | None) -> str | None:
    return None if names is None else "|".join(names)


def _share(hits: int, n: int) -> dict | None:
    """The Wilson interval of hits / n, None without images."""
    return wilson(hits, n, LEVEL) if n else None


def _conformal(
    record: ConformalInfo, classes: list[str], assessed: list[dict[str, Any]], y: np.ndarray
) -> dict:
    """Coverage (Wilson), mean set size, singleton and empty-set shares on images of the model's classes."""
    known = [a["prediction_set"] for a, k in zip(assessed, y, strict=True) if k >= 0]
    sets = np.array([[c in members for c in classes] for members in known], dtype=bool)
    sets = sets.reshape(len(known), len(classes))
    y_known = y[y >= 0]
    n = len(y_known)
    covered = int(sets[np.arange(n), y_known].sum())
    sizes = sets.sum(axis=1)
    return {
        "method": record.method,
        "target_coverage": record.coverage,
        "qhat": record.qhat,
        "n_val": record.n_val,
        "n": n,
        "covered": covered,
        "coverage": _share(covered, n),
        "mean_set_size": float(sizes.mean()) if n else None,
        "singleton_share": float((sizes == 1).mean()) if n else None,
        "empty_share": float((sizes == 0).mean()) if n else None,
    }


def _ood(record: OodInfo, assessed: list[dict[str, Any]], labels: np.ndarray, y: np.ndarray) -> dict:
    """Flag rate (Wilson) over every image, and per data label (a class the model lacks is marked)."""
    flagged = np.array([bool(a["ood"]["flagged"]) for a in assessed])
    per_label = {}
    for label in sorted(set(labels.tolist())):
        rows = labels == label
        per_label[str(label)] = {
            "n": int(rows.sum()),
            "flagged": int(flagged[rows].sum()),
            "share": float(flagged[rows].mean()),
            "model_class": bool((y[rows] >= 0).all()),
        }
    return {
        "method": record.method,
        "threshold": record.threshold,
        "quantile": record.quantile,
        "n": len(flagged),
        "flagged": int(flagged.sum()),
        "rate": _share(int(flagged.sum()), len(flagged)),
        "per_label": per_label,
    }


def _gate(assessed: list[dict[str, Any]]) -> dict:
    """Images that failed each check (count and share), how many passed all, and the checks not run."""
    n = len(assessed)
    counts = Counter(r for a in assessed for r in a["gate"]["reasons"])
    return {
        "n": n,
        "passed": sum(not a["gate"]["reasons"] for a in assessed),
        "reasons": {r: {"count": counts[r], "share": counts[r] / n if n else None} for r in REASONS},
        "unavailable": sorted({u for a in assessed for u in a["gate"]["unavailable"]}),
    }


def _abstain(assessed: list[dict[str, Any]]) -> dict:
    """Images whose result says to abstain (Wilson), and how often each reason was among the causes."""
    n = len(assessed)
    abstained = sum(bool(a["abstain"]) for a in assessed)
    reasons = Counter(r for a in assessed for r in a["abstain_reasons"])
    return {
        "n": n,
        "abstained": abstained,
        "rate": _share(abstained, n),
        "reasons": dict(sorted(reasons.items())),
    }
