"""Lung-aware preprocessing: crop a radiograph to its lungs, or also hide what lies outside them."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from covid_cxr.lungs.segmenter import segment

log = logging.getLogger(__name__)

MARGIN = 0.08  # of the lungs' box side, added on every side of the crop
DILATION = 0.03  # of the box's longer side: the mask mode keeps this much beyond the lungs
MIN_LUNGS = 0.05  # a mask under 5 % of the image is not trusted: the whole image is used


def lung_region(grey: np.ndarray, mode: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(the grey image cut to the lungs' box plus a margin, that box as top, left, height, width).

    ``mode`` ``mask`` also fills the pixels outside the dilated lungs with the lungs' median grey.
    When no plausible lung area is found the image comes back whole, unmasked.
    """
    mask = segment(grey)
    height, width = grey.shape
    if mask.mean() < MIN_LUNGS:
        log.debug("lung region: %.1f %% lungs found, using the whole image", 100 * mask.mean())
        return grey, (0, 0, height, width)
    top, left, rows, cols = _box(mask)
    crop = grey[top : top + rows, left : left + cols]
    if mode == "mask":
        radius = max(1, round(DILATION * max(rows, cols)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        inside = cv2.dilate(mask[top : top + rows, left : left + cols], disc) > 0
        crop = np.where(inside, crop, np.uint8(np.median(crop[inside])))
    return np.ascontiguousarray(crop), (top, left, rows, cols)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box of the mask grown by MARGIN of its sides, clipped to the image."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = round(MARGIN * (y1 - y0)), round(MARGIN * (x1 - x0))
    top, left = max(0, y0 - dy), max(0, x0 - dx)
    bottom, right = min(mask.shape[0], y1 + dy), min(mask.shape[1], x1 + dx)
    return int(top), int(left), int(bottom - top), int(right - left)
