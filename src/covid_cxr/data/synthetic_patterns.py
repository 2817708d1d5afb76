"""Disease patterns of synthetic phantoms: each returns (opacity 0..1, lesion mask) inside the lungs.

Opacity is the share of lung air that the pattern replaces with fluid or tissue.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from covid_cxr.data.synthetic_anatomy import (
    IMAGE_LEFT,
    IMAGE_RIGHT,
    SHIFT,
    blur,
    largest_component,
    smooth_noise,
)

Pattern = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def normal(sides: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clear lungs: nothing added, empty mask."""
    return np.zeros(sides.shape, np.float32), np.zeros(sides.shape, bool)


def covid(sides: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral peripheral lower-zone ground-glass opacities: hazy blobs on both lateral edges."""
    size = sides.shape[0]
    grid = np.arange(size, dtype=np.float32)
    field = np.zeros(sides.shape, np.float32)
    for side in (IMAGE_LEFT, IMAGE_RIGHT):
        ys, xs = np.nonzero(sides == side)
        y0, y1 = ys.min(), ys.max()
        for _ in range(rng.integers(4, 7)):
            row = int(rng.uniform(y0 + 0.55 * (y1 - y0), y1 - 0.08 * (y1 - y0)))
            row_xs = xs[ys == row]
            edge = row_xs.min() if side == IMAGE_LEFT else row_xs.max()
            inward = 1.0 if side == IMAGE_LEFT else -1.0
            x = edge + inward * rng.uniform(0.01, 0.06) * size
            sigma = rng.uniform(0.05, 0.075) * size
            gx = np.exp(-((grid - x) ** 2) / (2 * sigma**2))
            gy = np.exp(-((grid - row) ** 2) / (2 * sigma**2))
            field += rng.uniform(0.7, 1.0) * gy[:, None] * gx[None, :]
    field = np.minimum(field, 1.0) * (0.55 + 0.45 * smooth_noise(rng, size, 0.03))
    return _threshold(field, sides, 0.15, rng.uniform(0.7, 0.9))


def viral(sides: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse bilateral interstitial reticular pattern: a fine irregular net over both lungs."""
    size = sides.shape[0]
    layer = np.zeros(sides.shape, np.uint8)
    spacing = rng.uniform(0.03, 0.042)
    for side in (IMAGE_LEFT, IMAGE_RIGHT):
        ys, xs = np.nonzero(sides == side)
        u = np.arange(xs.min() / size - spacing, (xs.max() + 1) / size + spacing, spacing)
        v = np.arange(ys.min() / size - spacing, (ys.max() + 1) / size + spacing, spacing)
        nodes = np.stack(np.meshgrid(u, v), axis=-1)
        nodes += rng.uniform(-0.4, 0.4, nodes.shape) * spacing
        pts = np.round(nodes * size * (1 << SHIFT)).astype(np.int32)
        links = [
            (pts[:, :-1], pts[:, 1:], 0.75),
            (pts[:-1], pts[1:], 0.75),
            (pts[:-1, :-1], pts[1:, 1:], 0.2),
        ]
        for a, b, prob in links:  # horizontal, vertical and a few diagonal links between nodes
            segs = np.stack([a, b], axis=2).reshape(-1, 2, 2)
            segs = segs[rng.random(len(segs)) < prob]
            if len(segs):
                cv2.polylines(layer, list(segs), False, 255, max(1, round(size / 256)), cv2.LINE_AA, SHIFT)
    field = blur(layer.astype(np.float32) / 255.0, 0.004 * size)
    field *= 0.7 + 0.3 * smooth_noise(rng, size, 0.05)
    return _threshold(field, sides, 0.12, rng.uniform(0.5, 0.65))


def bacterial(sides: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One dense lobar consolidation: a bright, well-defined patch in one lobe of one lung."""
    size = sides.shape[0]
    side = IMAGE_LEFT if rng.random() < 0.5 else IMAGE_RIGHT
    lobe = _lobe(sides, side, rng)
    lobe = lobe if lobe.any() else sides == side
    ys, xs = np.nonzero(lobe)
    k = rng.integers(len(ys))
    cy, cx = 0.5 * (ys.mean() + ys[k]), 0.5 * (xs.mean() + xs[k])
    grid = np.arange(size, dtype=np.float32)
    ax, ay = rng.uniform(0.09, 0.15) * size, rng.uniform(0.07, 0.12) * size
    blob = ((grid[None, :] - cx) / ax) ** 2 + ((grid[:, None] - cy) / ay) ** 2
    blob += 0.6 * (smooth_noise(rng, size, 0.04) - 0.5)
    mask = largest_component(lobe & (blob < 1.0))
    if not mask.any():
        mask = largest_component(lobe)
    edge = blur(mask.astype(np.float32), 0.006 * size)
    texture = 0.85 + 0.15 * smooth_noise(rng, size, 0.02)
    amount = rng.uniform(0.8, 0.95) * edge * texture * mask
    return amount.astype(np.float32), mask


PATTERNS: dict[str, Pattern] = {"normal": normal, "covid": covid, "viral": viral, "bacterial": bacterial}


def _threshold(
    field: np.ndarray, sides: np.ndarray, cut: float, amplitude: float
) -> tuple[np.ndarray, np.ndarray]:
    """Opacity from the part of a 0..1 field above `cut`; the mask is where it meets the lungs.

    The opacity is not clipped at the lung border: it only fills air, so it shows inside the
    lungs and in their soft rim, without a seam along the mask's edge.
    """
    amount = np.clip((field - cut) / (1.0 - cut), 0.0, 1.0)
    return (amplitude * amount).astype(np.float32), (amount > 0) & (sides > 0)


def _lobe(sides: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """One lobe of a lung: upper/middle/lower on the patient's right, upper/lower on the left."""
    lung = sides == side
    ys, xs = np.nonzero(lung)
    size = sides.shape[0]
    grid = np.arange(size, dtype=np.float32)
    depth = (grid[:, None] - ys.min()) / (ys.max() - ys.min())
    medial = xs.max() if side == IMAGE_LEFT else xs.min()
    depth = depth - 0.12 * np.abs(grid[None, :] - medial) / (xs.max() - xs.min())
    bands = [(-1.0, 0.33), (0.33, 0.58), (0.58, 2.0)] if side == IMAGE_LEFT else [(-1.0, 0.45), (0.45, 2.0)]
    lo, hi = bands[rng.integers(len(bands))]
    return lung & (depth >= lo) & (depth < hi)
