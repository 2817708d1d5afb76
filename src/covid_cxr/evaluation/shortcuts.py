"""Shortcut checks: does the model read the lungs, or cues that merely correlate with the label?

Three checks, each giving numbers and a verdict that starts with ``OK``, ``CAUTION``, ``FLAG`` or
``SKIP``:

1. **label x source confounding** (manifest only): when each class comes mostly from its own
   source (hospital, dataset), a model can score well by recognising the source. Measured by
   Cramér's V of the label x source table and each class's share from its largest source.
   FLAG when V >= 0.5, CAUTION when V >= 0.3.
2. **lungs hidden**: the lung fields are filled with the median grey of the rest of the image (the
   phantom's lung mask when the manifest has ``lung_mask``, else the shipped lung segmenter's mask
   when it finds two plausible lungs, else two fixed ellipses covering typical PA lung fields) and
   the model is evaluated again. A model that reads only the lungs then
   sees the same thing in every image, so its outputs no longer depend on the class.
   FLAG when some class is still told apart from the others, one-vs-rest ROC AUC >= 0.75 (chance
   0.50), or when balanced accuracy stays above chance + 0.5 x (full-image balanced accuracy -
   chance), chance = 1 / number of classes present.
3. **border crop**: 10 % of each border is removed and the rest resized back to the original size.
   Markers, text and collimation edges live there; the lungs do not. FLAG when some class's
   one-vs-rest ROC AUC falls by more than 0.15.

Why AUC: blanking or cropping moves every image off the training distribution, which shifts the
model's outputs towards some class for all images alike. That shift changes accuracy but not the
ranking of images that AUC measures, so AUC tells "the cue is gone" from "the image looks unusual".
Measured on 64 px phantoms with the seed-004 ConvNet (60 test images): with the lungs hidden,
lungs-only models kept at most 0.61 AUC for any class, models trained with a marker on one class
0.77-1.00 for that class; cropping the border cost well-trained lungs-only models 0.16-0.52
accuracy but at most 0.12 AUC. Six more seeds (8 epochs, no augmentation) widened this: lungs-only
models kept up to 0.74 AUC with the lungs hidden (none flagged), and one marker model only 0.73
(missed); the border crop also zooms by 1.25, and lungs-only models that never saw a zoom lost up
to 0.22 AUC there (2 of 6 flagged for fragility), as much as marker models (up to 0.26). The
lungs-hidden check is the stronger evidence; neither is proof. Balanced accuracy is reported
beside AUC: it sits at chance for any uninformed model, whatever the class balance. Checks 2 and 3
are SKIPped when the model is not clearly above chance on the full images (balanced accuracy <=
chance + 0.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
from scipy.stats.contingency import association

from covid_cxr.data.images import load_image
from covid_cxr.evaluation.metrics import balanced_accuracy, class_auc

CONFOUNDING_FLAG_V = 0.5
CONFOUNDING_CAUTION_V = 0.3
LUNGS_HIDDEN_RETAINED = 0.5
LUNGS_HIDDEN_AUC = 0.75
BORDER_FRACTION = 0.10
BORDER_AUC_DROP = 0.15
MIN_SKILL = 0.10
MASK_DILATION = 0.02  # a given or predicted lung mask grows by this fraction of the image side
# Typical PA lung fields as (centre x, centre y, half-width, half-height), fractions of the image.
LUNG_ELLIPSES = ((0.29, 0.47, 0.17, 0.33), (0.71, 0.47, 0.17, 0.33))


def label_source_confounding(manifest: pd.DataFrame) -> dict:
    """Label x source counts, each class's largest source and its share, Cramér's V and a verdict."""
    table = pd.crosstab(manifest["label"].astype(str), manifest["source"].astype(str))
    largest = {
        label: {"source": str(row.idxmax()), "share": float(row.max() / row.sum())}
        for label, row in table.iterrows()
    }
    v = float(association(table.to_numpy(), method="cramer")) if min(table.shape) > 1 else None
    result = {
        "sources": [str(s) for s in table.columns],
        "table": {label: {str(s): int(n) for s, n in row.items()} for label, row in table.iterrows()},
        "largest_source": largest,
        "cramers_v": v,
    }
    return {**result, **_confounding_verdict(v, table, largest)}


def central_lung_mask(height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of two ellipses where the lungs of a typical PA chest X-ray lie."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for cx, cy, ax, ay in LUNG_ELLIPSES:
        centre = (round(cx * width), round(cy * height))
        axes = (max(1, round(ax * width)), max(1, round(ay * height)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def lung_mask(image: np.ndarray, mask_path: str | None = None) -> np.ndarray:
    """The image's lung mask: the given mask file (resized, slightly dilated) or the fixed ellipses."""
    height, width = image.shape[:2]
    if mask_path is None:
        return central_lung_mask(height, width)
    mask = (load_image(mask_path) > 127).astype(np.uint8)
    mask = mask if mask.ndim == 2 else mask.max(axis=2)
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return _dilate(mask)


def predicted_lung_mask(image: np.ndarray, lungs: np.ndarray | None = None) -> np.ndarray | None:
    """The shipped lung segmenter's mask (dilated) when it finds two plausible lungs, else None.

    `lungs` is the segmenter's 0/1 mask of `image` when already at hand (it is not segmented again)."""
    from covid_cxr.lungs import lung_stats, segment

    mask = segment(image) if lungs is None else lungs
    return _dilate(mask) if lung_stats(mask).quality == "ok" else None


def _dilate(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask grown by MASK_DILATION of the image's longer side, as bool."""
    radius = max(1, round(MASK_DILATION * max(mask.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def hide_lungs(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of `image` with the masked pixels set to the median grey (per channel) of the unmasked ones.

    The fill comes from outside the lungs, so it carries nothing of what the lungs showed.
    """
    out = image.copy()
    outside = image[~mask] if (~mask).any() else image.reshape(-1, *image.shape[2:])
    out[mask] = np.round(np.median(outside, axis=0)).astype(image.dtype)
    return out


def crop_border(image: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Remove `fraction` of each border and resize what is left back to the original size."""
    height, width = image.shape[:2]
    dy, dx = round(fraction * height), round(fraction * width)
    inner = np.ascontiguousarray(image[dy : height - dy, dx : width - dx])
    return cv2.resize(inner, (width, height), interpolation=cv2.INTER_LINEAR)


def lungs_hidden_check(
    y_true: np.ndarray, probs_full: np.ndarray, probs_hidden: np.ndarray, classes: Sequence[str]
) -> dict:
    """Numbers and verdict of the lungs-hidden check from (N, C) probabilities (see the module doc)."""
    result = _full_vs_altered(y_true, probs_full, probs_hidden, classes, "hidden")
    full, chance = result["balanced_accuracy_full"], result["chance"]
    result["balanced_accuracy_threshold"] = chance + LUNGS_HIDDEN_RETAINED * (full - chance)
    result["auc_threshold"] = LUNGS_HIDDEN_AUC
    return {**result, **_lungs_verdict(result)}


def border_crop_check(
    y_true: np.ndarray, probs_full: np.ndarray, probs_cropped: np.ndarray, classes: Sequence[str]
) -> dict:
    """Numbers and verdict of the border-crop check from (N, C) probabilities (see the module doc)."""
    result = {
        "fraction": BORDER_FRACTION,
        **_full_vs_altered(y_true, probs_full, probs_cropped, classes, "cropped"),
    }
    result["auc_drop"] = {c: result["auc_full"][c] - result["auc_cropped"][c] for c in result["auc_full"]}
    result["auc_drop_threshold"] = BORDER_AUC_DROP
    return {**result, **_border_verdict(result, result.pop("chance"))}


def _full_vs_altered(
    y_true: np.ndarray, probs_full: np.ndarray, probs_altered: np.ndarray, classes: Sequence[str], name: str
) -> dict:
    """Chance, accuracy, balanced accuracy and per-class AUC on full and altered images (keys `*_<name>`)."""
    y = np.asarray(y_true)
    result: dict = {"chance": 1 / len(set(y.tolist()))}
    for variant, probs in (("full", probs_full), (name, probs_altered)):
        predicted = probs.argmax(axis=1)
        result[f"accuracy_{variant}"] = float(np.mean(predicted == y))
        result[f"balanced_accuracy_{variant}"] = balanced_accuracy(y, predicted)
        result[f"auc_{variant}"] = _aucs(y, probs, classes)
    return result


def _confounding_verdict(v: float | None, table: pd.DataFrame, largest: dict) -> dict:
    """Flag and plain-language verdict of the confounding check."""
    if table.shape[1] == 1:
        return _verdict(
            False,
            f"SKIP: every image has the one source {table.columns[0]!r}, so label x source confounding "
            "cannot be measured here; a source column does not show how a collection was assembled "
            "(see the acquisition-cue check of the data checks)",
        )
    if v is None:
        return _verdict(False, "SKIP: only one class, label x source confounding is undefined")
    shares = ", ".join(f"{label} {d['share']:.0%} from {d['source']}" for label, d in largest.items())
    if v >= CONFOUNDING_FLAG_V:
        return _verdict(
            True,
            f"FLAG: labels are strongly tied to sources (Cramér's V {v:.2f}; {shares}): "
            "a model can score well by recognising the source",
        )
    if v >= CONFOUNDING_CAUTION_V:
        return _verdict(
            False, f"CAUTION: labels are moderately tied to sources (Cramér's V {v:.2f}; {shares})"
        )
    return _verdict(False, f"OK: labels are spread across sources (Cramér's V {v:.2f})")


def _lungs_verdict(r: dict) -> dict:
    """Flag and plain-language verdict of the lungs-hidden check."""
    full, hidden, chance = r["balanced_accuracy_full"], r["balanced_accuracy_hidden"], r["chance"]
    if full <= chance + MIN_SKILL:
        return _skip(full, chance)
    accuracy = f"balanced accuracy {hidden:.2f}, chance {chance:.2f}, full images {full:.2f}"
    kept = {c: a for c, a in r["auc_hidden"].items() if a >= LUNGS_HIDDEN_AUC}
    if kept:
        named = ", ".join(f"{c!r} (ROC AUC {a:.2f})" for c, a in kept.items())
        return _verdict(
            True,
            f"FLAG: with the lungs blanked the model still tells {named} from the other "
            f"classes (chance 0.50; {accuracy}): it likely uses cues outside the lungs",
        )
    if hidden > r["balanced_accuracy_threshold"]:
        return _verdict(
            True,
            f"FLAG: with the lungs blanked the model still scores {hidden:.2f} balanced "
            f"accuracy (chance {chance:.2f}, full images {full:.2f}): it likely uses cues outside "
            "the lungs",
        )
    best = max(r["auc_hidden"].values(), default=0.5)
    return _verdict(
        False,
        f"OK: with the lungs blanked the model no longer tells the classes apart (best "
        f"one-vs-rest ROC AUC {best:.2f}; {accuracy}): it relies on the lungs",
    )


def _border_verdict(r: dict, chance: float) -> dict:
    """Flag and plain-language verdict of the border-crop check."""
    full, cropped, drops = r["balanced_accuracy_full"], r["balanced_accuracy_cropped"], r["auc_drop"]
    if full <= chance + MIN_SKILL:
        return _skip(full, chance)
    removed = f"with {round(100 * BORDER_FRACTION)} % of each border removed"
    accuracy = f"balanced accuracy {full:.2f} -> {cropped:.2f}"
    if not drops:
        return _verdict(False, f"SKIP: no class has a ROC AUC on this data; {accuracy}")
    worst = max(drops, key=drops.get)
    if drops[worst] > BORDER_AUC_DROP:
        auc = f"ROC AUC {r['auc_full'][worst]:.2f} -> {r['auc_cropped'][worst]:.2f}"
        return _verdict(
            True,
            f"FLAG: {removed} the model tells {worst!r} from the other classes far less well "
            f"({auc}; {accuracy}): it likely relies on cues near the image edges (markers, text, "
            f"collimation) or is fragile to the {1 / (1 - 2 * BORDER_FRACTION):.2f}x zoom of this check",
        )
    return _verdict(
        False, f"OK: {removed}, the largest ROC AUC drop is {drops[worst]:.2f} ({worst}); {accuracy}"
    )


def _aucs(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """One-vs-rest ROC AUC of every class with both positives and negatives in y."""
    aucs = {name: class_auc(y == k, probs[:, k]) for k, name in enumerate(classes)}
    return {name: a for name, a in aucs.items() if a is not None}


def _skip(full: float, chance: float) -> dict:
    """The verdict when the model is not clearly above chance on full images."""
    return _verdict(
        False,
        f"SKIP: balanced accuracy on full images is {full:.2f} (chance {chance:.2f}); the "
        "model is too weak for this check to mean anything",
    )


def _verdict(flag: bool, text: str) -> dict:
    """The flag and verdict entries of a check's result."""
    return {"flag": flag, "verdict": text}
