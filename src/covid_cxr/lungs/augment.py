"""Augmentation for lung masks: what the classifiers' images look like, not what lungs-256 looks like.

Paediatric and zoomed-out framing, aspect squashes (Kermany), rotation and shift, large opacities
painted inside the lungs (consolidation, white-out), gamma and low contrast, inversion, CLAHE, blur
and noise. The mask follows every geometric step; intensity steps leave it alone.
"""

from __future__ import annotations

import cv2
import numpy as np


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random variant of a uint8 grey image and its 0/1 mask (same size)."""
    image, mask = _geometry(image, mask, rng)
    if rng.random() < 0.5:
        image = _opacities(image, mask, rng)
    return _intensity(image, rng), mask


def _geometry(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, rotate, scale (down to a small, child-sized chest), squash the aspect and shift."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    h, w = image.shape
    scale = rng.uniform(0.55, 0.85) if rng.random() < 0.25 else rng.uniform(0.85, 1.15)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-12, 12), scale)
    aspect = rng.uniform(0.85, 1.2)  # wider or narrower than the original, about the centre
    matrix[0] = aspect * matrix[0] + (0, 0, (1 - aspect) * w / 2)
    matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * (w, h)
    border = int(rng.choice([0, int(np.median(image[:, :4]))]))
    warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), borderValue=border)
    lungs = cv2.warpAffine(np.ascontiguousarray(mask) * 255, matrix, (w, h), flags=cv2.INTER_LINEAR)
    return warped, (lungs > 127).astype(np.uint8)


def _opacities(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brighten smooth blobs centred inside the lungs, sometimes a whole lung (white-out)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return image
    h, w = image.shape
    field = np.zeros((h, w), np.float32)
    if rng.random() < 0.3:
        side = xs < w / 2 if rng.random() < 0.5 else xs >= w / 2
        field[ys[side], xs[side]] = rng.uniform(0.5, 0.9)
        field = cv2.GaussianBlur(field, (0, 0), w * 0.03)
    for _ in range(rng.integers(1, 4)):
        pick = rng.integers(len(ys))
        blob = np.zeros((h, w), np.float32)
        blob[ys[pick], xs[pick]] = 1.0
        blob = cv2.GaussianBlur(blob, (0, 0), w * rng.uniform(0.04, 0.15))
        field = np.maximum(field, blob / blob.max() * rng.uniform(0.3, 0.85))
    out = image.astype(np.float32)
    return np.clip(out + field * (255.0 - out), 0, 255).astype(np.uint8)


def _intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, low contrast, brightness, inversion, CLAHE, blur and noise, each at random."""
    x = image.astype(np.float32) / 255.0
    x = x ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.3:
        x = x.mean() + (x - x.mean()) * rng.uniform(0.3, 0.7)
    x = np.clip(x + rng.uniform(-0.08, 0.08), 0, 1)
    if rng.random() < 0.15:
        x = 1.0 - x
    out = (x * 255).astype(np.uint8)
    if rng.random() < 0.15:
        out = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(out)
    if rng.random() < 0.2:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.2:
        noisy = out.astype(np.float32) + rng.normal(0, rng.uniform(3, 10), out.shape)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return out
