"""Do explanations point at the lesion, and are they faithful to the model?

Localisation needs known lesion masks (the synthetic phantoms have them): the share of CAM energy
inside the mask (compare with the lesion's share of the image: a CAM blind to the lesion scores
about that share) and the pointing game (Zhang et al., ECCV 2016: is the CAM's maximum inside the
mask, dilated by a tolerance). Faithfulness needs no masks: ROAD (Rong et al., ICML 2022) from
pytorch-grad-cam removes the most / least relevant pixels by noisy linear imputation and compares
how much the target probability drops.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from covid_cxr.data.preprocess import preprocess
from covid_cxr.errors import DataError
from covid_cxr.explain.cam import (
    CamModel,
    Target,
    as_cam_model,
    compute_heatmap,
    input_cams,
    isolated,
    predict_probabilities,
    resolve_target,
)
from covid_cxr.predictor import Probabilities

if TYPE_CHECKING:
    from covid_cxr.predictor import Predictor

log = logging.getLogger(__name__)

POINTING_TOLERANCE_PX = 15  # Zhang et al.'s tolerance at ~224 px
ROAD_PERCENTILES = (20, 40, 60, 80)
_CHUNK = 16


def energy_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total (non-negative) energy inside ``mask``; 0.0 for an all-zero heatmap."""
    heat, region = _check(heatmap, mask)
    total = float(heat.sum())
    return float(heat[region].sum()) / total if total > 0 else 0.0


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance_px: int = POINTING_TOLERANCE_PX) -> bool:
    """True when the heatmap's maximum lies inside ``mask`` dilated by a disc of radius ``tolerance_px``."""
    heat, region = _check(heatmap, mask)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    if tolerance_px > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance_px + 1, 2 * tolerance_px + 1))
        region = cv2.dilate(region.astype(np.uint8), disc) > 0
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(region[row, col])


def explanation_quality(
    model: Predictor | CamModel,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    method: str = "gradcam",
    targets: Sequence[Target] | None = None,
    layer: str | None = None,
    tolerance_px: int = POINTING_TOLERANCE_PX,
) -> dict[str, float | int | str]:
    """Mean energy share in the lesion masks, the lesions' mean share of the image, their ratio and the
    pointing-game hit rate. Images with an empty mask (no lesion, e.g. ``normal``) are skipped and counted.

    ``targets``: the class to explain per image (e.g. the true label); None explains the predicted class.
    """
    if len(images) != len(masks) or (targets is not None and len(targets) != len(images)):
        raise ValueError(
            f"got {len(images)} images, {len(masks)} masks and "
            f"{'no' if targets is None else len(targets)} targets; give one per image"
        )
    subject = as_cam_model(model)
    energy, share, hits = [], [], []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        region = np.asarray(mask, dtype=bool)
        if not region.any():
            continue
        heat = compute_heatmap(subject, image, method, None if targets is None else targets[i], layer)[2]
        energy.append(energy_in_mask(heat, region))
        share.append(float(region.mean()))
        hits.append(pointing_game(heat, region, tolerance_px))
    if not energy:
        raise DataError(f"explanation quality: none of the {len(masks)} lesion masks has a lesion pixel")
    result = {
        "method": method,
        "images": len(energy),
        "skipped_empty_masks": len(masks) - len(energy),
        "energy_in_mask": float(np.mean(energy)),
        "lesion_share": float(np.mean(share)),
        "energy_ratio": float(np.mean(energy) / np.mean(share)),
        "pointing_hit_rate": float(np.mean(hits)),
    }
    log.debug(
        "%s lesion energy %.2f (%.1fx uniform), pointing game %.2f on %d images",
        method,
        result["energy_in_mask"],
        result["energy_ratio"],
        result["pointing_hit_rate"],
        result["images"],
    )
    return result


def faithfulness(
    model: Predictor | CamModel,
    images: Sequence[np.ndarray],
    method: str = "gradcam",
    targets: Sequence[Target] | None = None,
    layer: str | None = None,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> float:
    """Mean ROAD combined score (pytorch-grad-cam ``ROADCombined``) of the target-class probability.

    (drop when the least relevant pixels are removed - drop when the most relevant are removed) / 2,
    averaged over ``percentiles``: > 0 when the CAM ranks pixels as the model uses them, about 0 for a
    random map. The imputation noise uses ``seed``; the global torch RNG is left as it was.
    """
    if not images:
        raise ValueError("faithfulness needs at least one image")
    subject = as_cam_model(model)
    wanted = [None] * len(images) if targets is None else list(targets)
    scores = []
    for start in range(0, len(images), _CHUNK):
        chunk = [preprocess(image, subject.spec) for image in images[start : start + _CHUNK]]
        scores.append(
            _road(
                subject,
                torch.stack(chunk),
                wanted[start : start + _CHUNK],
                method,
                layer,
                percentiles,
                seed + start,
            )
        )
    return float(np.mean(np.concatenate(scores)))


def _road(
    subject: CamModel,
    x: torch.Tensor,
    targets: Sequence[Target],
    method: str,
    layer: str | None,
    percentiles: Sequence[int],
    seed: int,
) -> np.ndarray:
    """ROADCombined scores (N,) of one preprocessed batch."""
    probability_model = Probabilities(
        subject.model, len(subject.classes), subject.temperature, subject.output
    )
    with subject.lock:
        probs = predict_probabilities(subject, x)
        indices = [resolve_target(t, subject.classes, p) for t, p in zip(targets, probs, strict=True)]
        cams = input_cams(subject, x, indices, method, layer)
        metric = ROADCombined(percentiles=list(percentiles))
        with isolated(subject.model), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)  # ROAD imputer, NumPy 2
            torch.manual_seed(seed)
            device = next(subject.model.parameters()).device
            return metric(x.to(device), cams, [ClassifierOutputTarget(i) for i in indices], probability_model)


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative float heatmap and bool mask of the same 2-D shape."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0)
    region = np.asarray(mask, dtype=bool)
    if heat.ndim != 2 or heat.shape != region.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {region.shape} must be 2-D of the same shape")
    if heat.min() < 0:
        raise ValueError(f"heatmap has negative values (min {heat.min():.3g}); CAMs are non-negative")
    return heat, region


def lung_energy(
    model: Predictor | CamModel,
    images: Sequence[np.ndarray],
    lungs: Sequence[np.ndarray | None],
    targets: Sequence[int],
    method: str = "gradcam",
) -> dict:
    """Per target class: mean CAM energy share inside the lungs, the lungs' mean share of the image, ratio.

    A CAM that ignores the lungs scores about their share (ratio 1); one on the lungs scores more.
    Images whose lung mask is None (no plausible lungs found) are skipped and counted.
    """
    subject = as_cam_model(model)
    per: dict[str, list[tuple[float, float]]] = {}
    for image, mask, target in zip(images, lungs, targets, strict=True):
        if mask is None or not mask.any():
            continue
        heat = compute_heatmap(subject, image, method, int(target))[2]
        per.setdefault(subject.classes[int(target)], []).append(
            (energy_in_mask(heat, mask), float(mask.mean()))
        )
    result: dict = {"method": method, "skipped_no_lungs": sum(m is None or not m.any() for m in lungs)}
    for name, pairs in per.items():
        energy, share = (float(np.mean(v)) for v in zip(*pairs, strict=True))
        result[name] = {
            "images": len(pairs),
            "energy_in_lungs": energy,
            "lung_share": share,
            "ratio": energy / share,
        }
    return result
