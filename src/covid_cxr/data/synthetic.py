"""Synthetic chest X-ray phantoms: the demo's built-in dataset and the tests' workhorse.

Each phantom is a PA chest (body, lungs, heart, mediastinum, ribs, diaphragm) with a random
anatomy and exposure, plus one class pattern drawn inside the lungs:

- ``normal``: clear lungs;
- ``covid``: bilateral peripheral lower-zone ground-glass opacities;
- ``viral``: diffuse bilateral interstitial reticular (net-like) pattern;
- ``bacterial``: one dense lobar consolidation in one lobe of one lung.

Example:
    >>> frame = synthesize("phantoms", n=30, size=64)
    >>> sorted(frame["label"].unique())
    ['covid', 'normal', 'viral']
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covid_cxr.data.manifest import make_manifest, save_manifest
from covid_cxr.data.synthetic_anatomy import expose, render_anatomy, rotate
from covid_cxr.data.synthetic_patterns import PATTERNS
from covid_cxr.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = tuple(PATTERNS)
DEFAULT_CLASSES: tuple[str, ...] = ("normal", "covid", "viral")
SOURCE = "synthetic"
EXTRA_COLUMNS = ["lesion_mask", "lung_mask", "marker"]
MIN_SIZE = 32
REPEAT_FRACTION = 0.15  # share of patients who get a second image
MARKER_SIDE = 0.06  # side of the shortcut marker, as a fraction of the image side


@dataclass(frozen=True)
class Scene:
    """One patient before exposure: density map (float32), lesion and lung masks (bool)."""

    density: np.ndarray
    lesion: np.ndarray
    lungs: np.ndarray


def render_scene(label: str, rng: np.random.Generator, size: int) -> Scene:
    """Draw a random anatomy with the pattern of `label`; anatomy and pattern use separate streams."""
    _check_render(label, size)
    anatomy_seed, pattern_seed = rng.integers(0, 2**63, size=2)
    anatomy = render_anatomy(np.random.default_rng(anatomy_seed), size)
    opacity, lesion = PATTERNS[label](anatomy.sides, np.random.default_rng(pattern_seed))
    (density,) = rotate(anatomy.angle, size, anatomy.density(opacity), nearest=False)
    sides, lesion_u8 = rotate(anatomy.angle, size, anatomy.sides, lesion.astype(np.uint8), nearest=True)
    return Scene(density=density, lesion=lesion_u8 > 0, lungs=sides > 0)


def render_phantom(
    label: str, rng: np.random.Generator, size: int, marker: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one phantom: (uint8 image, bool lesion mask, bool lung mask), all (size, size)."""
    scene_seed, exposure_seed = rng.integers(0, 2**63, size=2)
    scene = render_scene(label, np.random.default_rng(scene_seed), size)
    image = expose(scene.density, np.random.default_rng(exposure_seed))
    return (burn_marker(image) if marker else image), scene.lesion, scene.lungs


def burn_marker(image: np.ndarray) -> np.ndarray:
    """Copy of `image` with a small saturated square in the top-left corner (a shortcut cue)."""
    size = image.shape[0]
    side = max(2, round(MARKER_SIDE * size))
    start = max(1, round(0.03 * size))
    marked = image.copy()
    marked[start : start + side, start : start + side] = 255
    return marked


def synthesize(
    out: str | Path,
    n: int,
    classes: Sequence[str] | None = None,
    size: int = 128,
    shortcut_marker: bool = False,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Write `n` phantoms, their masks and manifest.csv under `out`; return the manifest (absolute paths)."""
    names = _check_classes(classes)
    if n < 1:
        raise ConfigError(f"synthetic dataset: n must be at least 1, got {n}")
    if seed < 0:
        raise ConfigError(f"synthetic dataset: seed must be a non-negative integer, got {seed}")
    _check_render(names[0], size)
    root = Path(out)
    layout_seq, patient_seq = np.random.SeedSequence(seed).spawn(2)
    plan = _plan(n, names, np.random.default_rng(layout_seq))
    rows: list[dict] = []
    for (patient_id, label, count), seq in zip(plan, patient_seq.spawn(len(plan)), strict=True):
        marker = shortcut_marker and label == names[0]
        rows += _write_patient(root, patient_id, label, count, size, marker, np.random.default_rng(seq))
        if progress is not None:
            progress(len(rows))
    frame = make_manifest(rows, SOURCE).merge(pd.DataFrame(rows)[["path", *EXTRA_COLUMNS]], on="path")
    save_manifest(frame, root / "manifest.csv")
    logger.info("wrote %d synthetic images of %d patients to %s", len(rows), len(plan), root)
    for column in ("path", "lesion_mask", "lung_mask"):
        frame[column] = [str((root / p).resolve()) for p in frame[column]]
    return frame


def _write_patient(
    root: Path, patient_id: str, label: str, count: int, size: int, marker: bool, rng: np.random.Generator
) -> list[dict]:
    """Render one patient's scene and write `count` exposures of it with their masks."""
    scene = render_scene(label, rng, size)
    rows = []
    for k in range(1, count + 1):
        image = expose(scene.density, rng)
        image = burn_marker(image) if marker else image
        image_id = f"{patient_id}-{k}"
        paths = {
            "path": f"{label}/{image_id}.png",
            "lesion_mask": f"masks/lesion/{image_id}.png",
            "lung_mask": f"masks/lungs/{image_id}.png",
        }
        data = {
            "path": _png(image),
            "lesion_mask": _png(scene.lesion.astype(np.uint8) * 255),
            "lung_mask": _png(scene.lungs.astype(np.uint8) * 255),
        }
        for key, rel in paths.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data[key])
        rows.append(
            {
                **paths,
                "label": label,
                "patient_id": patient_id,
                "view": "PA",
                "width": size,
                "height": size,
                "sha256": hashlib.sha256(data["path"]).hexdigest(),
                "marker": marker,
            }
        )
    return rows


def _plan(n: int, names: list[str], rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(patient_id, label, image count) per patient: classes round-robin, ~15% with two images."""
    per_class = [n // len(names) + (i < n % len(names)) for i in range(len(names))]
    queues = []
    for count in per_class:
        doubles = round(count * REPEAT_FRACTION / (1 + REPEAT_FRACTION))
        sizes = np.ones(count - doubles, int)
        sizes[rng.choice(len(sizes), size=doubles, replace=False)] = 2
        queues.append(sizes.tolist())
    order = []
    for j in range(max(map(len, queues))):
        order += [(name, queue[j]) for name, queue in zip(names, queues, strict=True) if j < len(queue)]
    width = max(4, len(str(len(order))))
    return [(f"P{i + 1:0{width}d}", name, count) for i, (name, count) in enumerate(order)]


def _check_classes(classes: Sequence[str] | None) -> list[str]:
    """Validate class names: known, unique, at least one."""
    names = list(DEFAULT_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in PATTERNS]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"synthetic classes {names} are invalid: give unique names among {', '.join(CLASS_NAMES)}"
        )
    return names


def _check_render(label: str, size: int) -> None:
    """Validate one render request."""
    if label not in PATTERNS:
        raise ConfigError(f"unknown phantom class {label!r}; valid classes: {', '.join(CLASS_NAMES)}")
    if size < MIN_SIZE:
        raise ConfigError(f"phantom size must be at least {MIN_SIZE} pixels, got {size}")


def _png(image: np.ndarray) -> bytes:
    """Encode a uint8 grey image as PNG bytes."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise DataError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return buf.tobytes()
