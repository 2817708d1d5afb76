"""How much of the Grad-CAM falls on the lungs, per class, on a sample of evaluated images."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from covid_cxr.data.images import load_image
from covid_cxr.explain.quality import lung_energy
from covid_cxr.lungs import lung_stats, segment

if TYPE_CHECKING:
    from covid_cxr.predictor import Predictor

log = logging.getLogger(__name__)


def cam_lung_share(predictor: Predictor, evaluated: pd.DataFrame, n: int, seed: int) -> dict | None:
    """`lung_energy` of the true class on up to `n` images; lungs from the manifest or the segmenter."""
    if n <= 0 or evaluated.empty:
        return None
    sample = evaluated.sample(n=min(n, len(evaluated)), random_state=seed).reset_index(drop=True)
    images = [load_image(p) for p in sample["path"]]
    given = sample["lung_mask"] if "lung_mask" in sample else pd.Series([None] * len(sample))
    lungs = [_lungs(image, path) for image, path in zip(images, given, strict=True)]
    result = lung_energy(predictor, images, lungs, [int(v) for v in sample["_y"]])
    manifest = sum(isinstance(p, str) and bool(p) for p in given)
    result["lung_masks"] = {"manifest": manifest, "predicted": len(sample) - manifest}
    log.info("Grad-CAM energy in the lungs: %s", result)
    return result


def _lungs(image: np.ndarray, mask_path: object) -> np.ndarray | None:
    """The manifest's lung mask at the image's size, else the predicted one when it is plausible."""
    if isinstance(mask_path, str) and mask_path:
        mask = load_image(mask_path)
        mask = mask if mask.ndim == 2 else mask.max(axis=2)
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        return mask > 127
    mask = segment(image)
    return mask.astype(bool) if lung_stats(mask).quality == "ok" else None
