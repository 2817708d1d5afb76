"""Chest anatomy of a synthetic phantom: body, lungs, heart, mediastinum, bones, and exposure.

Geometry is drawn in normalised coordinates (x and y in 0..1, y downwards) as a density map
(0 = air, about 1 = bone), seen as a PA radiograph: the patient's left (heart side) is on the
image's right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4  # sub-pixel precision of cv2 drawing: coordinates are multiplied by 2**SHIFT
IMAGE_LEFT, IMAGE_RIGHT = 1, 2  # lung labels: patient's right lung, patient's left lung


@dataclass(frozen=True)
class Anatomy:
    """An unrotated chest: tissue density, air in the lungs, lung labels and tilt.

    The density of the chest is ``tissue - air * (1 - opacity)``, where a disease pattern's
    opacity (0..1) is the share of lung air it replaces.
    """

    tissue: np.ndarray
    air: np.ndarray
    sides: np.ndarray
    angle: float

    def density(self, opacity: np.ndarray) -> np.ndarray:
        """Density map with `opacity` filling the lungs' air."""
        return self.tissue - self.air * (1.0 - opacity)


def points(u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """Normalised (u, v) coordinates -> int32 (N, 2) points for cv2 drawing with SHIFT."""
    return np.round(np.stack([u, v], axis=1) * size * (1 << SHIFT)).astype(np.int32)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with a sigma in pixels (no-op below a tenth of a pixel)."""
    return cv2.GaussianBlur(img, (0, 0), sigma_px) if sigma_px >= 0.1 else img


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Low-frequency noise in 0..1 with features about `sigma` (normalised) wide."""
    field = blur(rng.random((size, size), dtype=np.float32), sigma * size)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo + 1e-6)


def render_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """Sample a random chest and draw it as a density map with its lung fields."""
    p = _sample_params(rng)
    lungs = np.zeros((size, size), np.uint8)
    for side, s in ((IMAGE_LEFT, -1.0), (IMAGE_RIGHT, 1.0)):
        u, v = _lung_outline(p, s)
        cv2.fillPoly(lungs, [points(u, v, size)], side, cv2.LINE_8, SHIFT)
    heart = _ellipse_mask(size, p["heart_c"], p["heart_ax"], p["heart_angle"])
    lungs[heart > 0] = 0
    lungs = cv2.morphologyEx(lungs, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    for side in (IMAGE_LEFT, IMAGE_RIGHT):  # drop slivers the heart cuts off
        lungs[(lungs == side) & ~largest_component(lungs == side)] = 0
    lung_soft = blur((lungs > 0).astype(np.float32), 0.01 * size)
    yy = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    air = p["lung_dark"] * lung_soft * (1.0 - 0.3 * yy) - 0.07 * _vessels(p, rng, size) * lung_soft
    tissue = _soft_tissue(p, size, heart) + 0.15 * _bones(p, size) * (0.35 + 0.65 * lung_soft)
    return Anatomy(tissue.astype(np.float32), air.astype(np.float32), lungs, p["angle"])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty stays empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def expose(density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random exposure (gamma, contrast, brightness) and quantum noise -> uint8 image."""
    gamma = rng.uniform(0.85, 1.2)
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-0.06, 0.06)
    img = np.clip(density, 0.0, 1.0) ** gamma * contrast + brightness
    img += rng.normal(0.0, rng.uniform(0.008, 0.025), density.shape).astype(np.float32)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def rotate(angle: float, size: int, *layers: np.ndarray, nearest: bool) -> list[np.ndarray]:
    """Rotate layers about the image centre; `nearest` keeps label maps and masks exact."""
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    border = cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REPLICATE
    return [cv2.warpAffine(layer, matrix, (size, size), flags=flags, borderMode=border) for layer in layers]


def _sample_params(rng: np.random.Generator) -> dict:
    """Random anatomy: position, lung sizes, diaphragm, heart, air content of the lungs, tilt."""
    cx = 0.5 + rng.normal(0.0, 0.012)
    top = rng.uniform(0.10, 0.15)
    cpy = rng.uniform(0.74, 0.82)
    cpy_r = cpy - rng.uniform(0.0, 0.03)  # patient's right hemidiaphragm sits higher (liver)
    heart_w = rng.uniform(0.15, 0.19)
    return {
        "cx": cx,
        "top": top,
        "med": rng.uniform(0.05, 0.07),
        "lat": {-1.0: rng.uniform(0.32, 0.37), 1.0: rng.uniform(0.31, 0.36)},
        "cpy": {-1.0: cpy_r, 1.0: cpy},
        "dome": {-1.0: rng.uniform(0.08, 0.12), 1.0: rng.uniform(0.07, 0.11)},
        "body_w": rng.uniform(0.43, 0.48),
        "heart_c": (cx + rng.uniform(0.05, 0.08), cpy - rng.uniform(0.09, 0.12)),
        "heart_ax": (heart_w, heart_w * rng.uniform(0.62, 0.75)),
        "heart_angle": rng.uniform(15.0, 30.0),
        "rib_phase": rng.uniform(-0.01, 0.01),
        "lung_dark": rng.uniform(0.40, 0.48),
        "angle": rng.uniform(-4.0, 4.0),
    }


def _lung_outline(p: dict, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed outline of one lung (s = -1 image left, +1 image right) in normalised coords."""
    top, med, lat, cpy, dome = p["top"], p["med"], p["lat"][s], p["cpy"][s], p["dome"][s]
    apex = med + 0.09
    t = np.linspace(0.0, 1.0, 28)[1:]
    lat_off = apex + (lat - apex) * np.sin(np.minimum(t / 0.7, 1.0) * np.pi / 2) ** 0.6
    lat_y = top + t * (cpy - top)
    w = np.linspace(0.0, 1.0, 20)[1:]
    rise = np.sin(np.minimum(w / 0.55, 1.0) * np.pi / 2) - 0.35 * np.clip((w - 0.55) / 0.45, 0, 1) ** 2
    dia_off = lat_off[-1] + w * (med - lat_off[-1])
    dia_y = cpy - dome * rise
    m = np.linspace(1.0, 0.0, 20)[1:]
    med_off = med + (apex - 0.02 - med) * (1.0 - m) ** 3
    med_y = top + 0.025 + m * (dia_y[-1] - top - 0.025)
    a = np.linspace(np.pi, 0.0, 9)[1:-1]
    arc_off = apex - 0.01 + 0.01 * np.cos(a)
    arc_y = top + 0.012 - 0.012 * np.sin(a)
    off = np.concatenate([[apex - 0.02], arc_off, [apex], lat_off, dia_off, med_off])
    y = np.concatenate([[top + 0.012], arc_y, [top], lat_y, dia_y, med_y])
    return p["cx"] + s * off, y


def _ellipse_mask(size: int, centre: tuple, axes: tuple, angle: float) -> np.ndarray:
    """Filled ellipse (normalised centre and semi-axes) as a uint8 mask."""
    mask = np.zeros((size, size), np.uint8)
    c = tuple(int(round(c * size * (1 << SHIFT))) for c in centre)
    a = tuple(int(round(a * size * (1 << SHIFT))) for a in axes)
    cv2.ellipse(mask, c, a, angle, 0, 360, 1, -1, cv2.LINE_8, SHIFT)
    return mask


def _soft_tissue(p: dict, size: int, heart: np.ndarray) -> np.ndarray:
    """Body outline, abdomen, mediastinum, heart shadow and spine (the chest without its air)."""
    cx, bw = p["cx"], p["body_w"]
    half = np.array([0.08, 0.09, 0.16, bw - 0.04, bw - 0.01, bw, bw - 0.02])
    ys = np.array([-0.1, 0.04, 0.075, 0.12, 0.2, 0.5, 1.1])
    u = np.concatenate([cx - half, (cx + half)[::-1]])
    v = np.concatenate([ys, ys[::-1]])
    body = np.zeros((size, size), np.uint8)
    cv2.fillPoly(body, [points(u, v, size)], 1, cv2.LINE_8, SHIFT)
    body_f = blur(body.astype(np.float32), 0.02 * size)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    xx, yy = grid[None, :], grid[:, None]
    thickness = np.clip(1.0 - ((xx - cx) / bw) ** 2, 0.0, 1.0) ** 0.5
    density = body_f * (0.42 + 0.22 * thickness)
    belly = 1.0 / (1.0 + np.exp(-(yy - max(p["cpy"].values()) + 0.08) / 0.04))
    density += 0.10 * body_f * belly
    band = (np.abs(xx - cx) < p["med"] + 0.015) & (yy < p["heart_c"][1] + 0.05)
    density += 0.12 * blur(band.astype(np.float32), 0.02 * size)
    density += 0.07 * blur(heart.astype(np.float32), 0.015 * size)
    bubble = _ellipse_mask(size, (cx + 0.2, p["cpy"][1.0] + 0.045), (0.045, 0.022), 0.0)
    density -= 0.10 * blur(bubble.astype(np.float32), 0.01 * size)
    spine = (np.abs(xx - cx) < 0.03) * (0.8 + 0.2 * (np.cos(yy * np.pi / 0.04) > -0.6))
    density += 0.04 * blur(spine.astype(np.float32), 0.006 * size)
    return density


def _bones(p: dict, size: int) -> np.ndarray:
    """Posterior and anterior ribs and clavicles, 0..1."""
    bones = np.zeros((size, size), np.uint8)
    width = max(1, round(0.02 * size))
    spacing = (max(p["cpy"].values()) - p["top"]) / 9.5
    v = np.linspace(0.0, 1.0, 24)
    for s in (-1.0, 1.0):
        reach = p["lat"][s] + 0.04
        post, ant = [], []
        for i in range(10):
            y0 = p["top"] - 0.01 + p["rib_phase"] + i * spacing
            off = 0.03 + v * (reach - 0.03)
            rib_y = y0 - 0.03 + 0.22 * (v - 0.35) ** 2 + 0.06 * v**6
            post.append(points(p["cx"] + s * off, rib_y, size))
            a_off = reach - v * (reach - 0.13)
            ant.append(points(p["cx"] + s * a_off, y0 + 0.07 + 0.10 * v**1.4, size))
        cv2.polylines(bones, post, False, 255, width, cv2.LINE_AA, SHIFT)
        cv2.polylines(bones, ant[:6], False, 90, max(1, width - 1), cv2.LINE_AA, SHIFT)
        cu = p["cx"] + s * np.linspace(0.03, 0.26, 12)
        cv = p["top"] + 0.045 - 0.06 * np.linspace(0, 1, 12) ** 1.5
        clavicle = points(cu, cv, size)
        cv2.polylines(bones, [clavicle], False, 255, max(1, round(0.028 * size)), cv2.LINE_AA, SHIFT)
    return blur(bones.astype(np.float32) / 255.0, 0.005 * size)


def _vessels(p: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """Faint vascular markings branching out of each hilum, 0..1."""
    layer = np.zeros((size, size), np.uint8)
    hilum_y = p["top"] + 0.42 * (max(p["cpy"].values()) - p["top"])
    for s in (-1.0, 1.0):
        angles = rng.uniform(-1.3, 1.3, 7)
        lengths = rng.uniform(0.12, 0.24, 7)
        t = np.linspace(0.0, 1.0, 8)[:, None]
        bend = rng.uniform(-0.25, 0.25, 7)
        ang = angles + bend * t
        u = p["cx"] + s * (p["med"] + 0.03 + lengths * t * np.cos(ang))
        v = hilum_y + lengths * t * np.sin(ang)
        branches = [points(u[:, k], v[:, k], size) for k in range(7)]
        cv2.polylines(layer, branches, False, 255, 1, cv2.LINE_AA, SHIFT)
    return blur(layer.astype(np.float32) / 255.0, 0.006 * size)
