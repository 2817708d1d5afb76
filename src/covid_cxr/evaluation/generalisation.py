"""Will it hold at another hospital? The false-COVID share of all non-COVID images; source predictability.

``false_covid`` counts every non-COVID image of a dataset, including those of classes the model does
not know (Kermany's bacterial pneumonia for a COVID/Normal/Viral model): the share it calls COVID is
the question a hospital asks first. ``source_predictability`` cross-validates a logistic regression
(scikit-learn) on the model's penultimate features to predict each image's ``source`` within each
class: when it can (AUC well above 0.5), the model's features encode the hospital, whatever the label.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from covid_cxr.evaluation.intervals import wilson

log = logging.getLogger(__name__)

FLAG_AUC = 0.8  # as the acquisition-cue check: a class whose sources the features tell apart above this
MIN_PER_SOURCE = 5  # images of a class a source needs to take part
MAX_FOLDS = 5
CLASSIFIER = "logistic regression on standardised penultimate features"


@contextmanager
def penultimate(model: nn.Module) -> Iterator[list[np.ndarray]]:
    """Collect the input of the model's last linear layer (its penultimate features) on each forward."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    captured: list[np.ndarray] = []
    if not linears:
        yield captured
        return

    def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        captured.append(inputs[0].detach().flatten(1).float().cpu().numpy())

    handle = linears[-1].register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def false_covid(
    labels: np.ndarray, y: np.ndarray, predicted: np.ndarray, covid: int | None, level: float = 0.95
) -> dict | None:
    """Share of ALL non-COVID images called COVID (`y` -1 = a class the model lacks), per data label too.

    None when the model has no COVID class (`covid` is None).
    """
    if covid is None:
        return None
    non_covid = y != covid
    called = predicted == covid
    per_label = {}
    for label in sorted(set(labels[non_covid].tolist())):
        rows = non_covid & (labels == label)
        per_label[label] = {
            "n": int(rows.sum()),
            "called_covid": int(called[rows].sum()),
            "share": float(called[rows].mean()),
            "model_class": bool((y[rows] >= 0).all()),
        }
    n, hits = int(non_covid.sum()), int((called & non_covid).sum())
    covid_rows = y == covid
    return {
        "n_non_covid": n,
        "called_covid": hits,
        "share": hits / n if n else None,
        "interval": wilson(hits, n, level) if n else None,
        "n_outside_model_classes": int((y < 0).sum()),
        "per_label": per_label,
        "covid_recall": float(called[covid_rows].mean()) if covid_rows.any() else None,
        "n_covid": int(covid_rows.sum()),
    }


def source_predictability(
    features: np.ndarray, sources: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0
) -> dict:
    """Per class, how well the features predict the image's source (cross-validated AUC; 0.5 = chance)."""
    names = sorted(set(sources.tolist()))
    result: dict = {"classifier": CLASSIFIER, "threshold": FLAG_AUC, "sources": names, "per_class": {}}
    if len(names) < 2:
        reason = f"one source ({names[0] if names else 'none'}): nothing to tell apart"
        return {**result, "skipped": reason, "flag": False, "verdict": f"SKIP: {reason}."}
    if features.size == 0:
        reason = "the model has no linear layer to take penultimate features from"
        return {**result, "skipped": reason, "flag": False, "verdict": f"SKIP: {reason}."}
    for label in sorted(set(labels.tolist())):
        result["per_class"][label] = _within_class(features, sources, groups, labels == label, seed)
    aucs = {k: v["auc"] for k, v in result["per_class"].items() if v.get("auc") is not None}
    result["flag"] = any(a > FLAG_AUC for a in aucs.values())
    result["skipped"] = "" if aucs else "no class has images of two sources"
    result["verdict"] = _verdict(aucs, result["per_class"])
    log.log(
        logging.WARNING if result["flag"] else logging.INFO, "source predictability: %s", result["verdict"]
    )
    return result


def _within_class(
    features: np.ndarray, sources: np.ndarray, groups: np.ndarray, rows: np.ndarray, seed: int
) -> dict:
    """Cross-validated AUC and balanced accuracy of source prediction among one class's images."""
    counts = {str(s): int(n) for s, n in zip(*np.unique(sources[rows], return_counts=True), strict=True)}
    usable = [s for s, n in counts.items() if n >= MIN_PER_SOURCE]
    out: dict = {"images": counts, "auc": None, "balanced_accuracy": None, "chance": None}
    if len(usable) < 2:
        out["skipped"] = f"fewer than 2 sources with {MIN_PER_SOURCE}+ images of this class"
        return out
    keep = rows & np.isin(sources, usable)
    x, s, g = features[keep], sources[keep], groups[keep]
    folds = min(MAX_FOLDS, min(counts[u] for u in usable), len(np.unique(g)))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    try:
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        proba = cross_val_predict(model, x, s, cv=cv, groups=g, method="predict_proba")
    except ValueError as exc:
        out["skipped"] = f"cross-validation failed: {exc}"
        return out
    order = sorted(usable)
    score = proba[:, 1] if len(order) == 2 else proba
    out["auc"] = float(roc_auc_score(s, score, multi_class="ovr", labels=order if len(order) > 2 else None))
    out["balanced_accuracy"] = float(balanced_accuracy_score(s, np.asarray(order)[proba.argmax(axis=1)]))
    out["chance"] = 1 / len(order)
    out["folds"] = folds
    return out


def _verdict(aucs: dict[str, float], per_class: dict[str, dict]) -> str:
    """FLAG naming the classes whose sources the features tell apart, else OK, else SKIP."""
    if not aucs:
        return "SKIP: no class has images of two sources (each class comes from its own source: confounding)."
    high = {k: v for k, v in aucs.items() if v > FLAG_AUC}
    single = [k for k, v in per_class.items() if v.get("auc") is None]
    tail = f" Classes from one source only: {', '.join(single)}." if single else ""
    if high:
        listed = ", ".join(f"{k} (AUC {v:.2f})" for k, v in high.items())
        return (
            f"FLAG: within {listed} the model's features tell the sources apart (0.5 = chance): "
            "the model encodes the hospital, not only the disease." + tail
        )
    return (
        f"OK: within each class the sources are hard to tell apart (AUC at most {max(aucs.values()):.2f})."
        + tail
    )
