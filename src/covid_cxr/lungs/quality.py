"""Lung-mask clean-up and plausibility: area fraction, component count and a quality flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage

MIN_COMPONENT = 0.01  # components under 1 % of the image are specks
LUNG_RANGE = (0.03, 0.40)  # one plausible lung covers 3-40 % of a frontal radiograph


@dataclass(frozen=True)
class LungStats:
    """What a mask says: lung share of the image, components, and whether they look like two lungs."""

    area_fraction: float
    components: int
    quality: str  # "ok", or the reason the mask is not two plausible lungs

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest components over 1 % of the image, with holes filled: uint8 0/1."""
    labels, count = ndimage.label(mask > 0)
    if count == 0:
        return np.zeros(mask.shape, np.uint8)
    areas = ndimage.sum_labels(np.ones(mask.shape), labels, index=np.arange(1, count + 1))
    keep = [i + 1 for i in np.argsort(areas)[::-1][:2] if areas[i] >= MIN_COMPONENT * mask.size]
    return ndimage.binary_fill_holes(np.isin(labels, keep)).astype(np.uint8)


def lung_stats(mask: np.ndarray) -> LungStats:
    """Area fraction, component count and quality flag of a 0/1 mask."""
    labels, count = ndimage.label(mask > 0)
    fraction = float((mask > 0).mean())
    return LungStats(round(fraction, 4), int(count), _quality(labels, count, mask.shape))


def _quality(labels: np.ndarray, count: int, shape: tuple[int, ...]) -> str:
    """'ok' for two components each 3-40 % of the image, one either side of the vertical centre line."""
    if count != 2:
        return "no lungs found" if count == 0 else f"{count} components, expected 2"
    lo, hi = LUNG_RANGE
    size = labels.size
    fractions = [float((labels == i).sum()) / size for i in (1, 2)]
    if not all(lo <= f <= hi for f in fractions):
        return f"lung sizes {fractions[0]:.0%} and {fractions[1]:.0%} outside {lo:.0%}-{hi:.0%}"
    centres = [ndimage.center_of_mass(labels == i)[1] for i in (1, 2)]
    if (centres[0] - shape[1] / 2) * (centres[1] - shape[1] / 2) >= 0:
        return "both components on one side"
    return "ok"


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB picture: the image in grey, lungs tinted green, their outline in yellow."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    inside = mask > 0
    rgb[inside] = rgb[inside] * 0.65 + np.array([0, 255, 0]) * 0.35
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(rgb.astype(np.uint8))
    cv2.drawContours(out, contours, -1, (255, 220, 0), max(1, round(max(mask.shape) / 256)))
    return out
