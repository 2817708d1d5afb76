"""Lung-aware preprocessing: the crop box, the mask fill, the cache key and CAMs mapped back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from covid_cxr.data.images import load_image
from covid_cxr.data.preprocess import prepare, prepare_with_box
from covid_cxr.data.spec import Preprocess
from covid_cxr.explain.overlay import to_original
from covid_cxr.lungs.region import _box


def test_box_adds_the_margin_and_stays_inside() -> None:
    mask = np.zeros((100, 200), np.uint8)
    mask[20:70, 40:160] = 1
    assert _box(mask) == (16, 30, 58, 140)
    mask[0:5, 0:5] = 1
    assert _box(mask)[:2] == (0, 0)


def test_cache_key_of_specs_without_lungs_is_unchanged() -> None:
    spec = Preprocess(size=64, clahe={"clip_limit": 2.0, "tile_grid": 8})
    old = spec.model_dump(include={"size", "keep_aspect", "channels", "white_balance", "clahe"})
    assert spec.cache_key() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert (
        len({spec.cache_key(), *(spec.model_copy(update={"lungs": m}).cache_key() for m in ("crop", "mask"))})
        == 3
    )


def test_cam_goes_back_into_the_crop_box() -> None:
    cam = np.ones((32, 32), np.float32)
    cam[:16] = 0.5
    heat = to_original(cam, 100, 80, keep_aspect=False, box=(10, 20, 50, 40))
    assert heat.shape == (100, 80)
    assert heat[:10].max() == 0 and heat[:, :20].max() == 0 and heat[60:].max() == 0
    assert heat[40:60, 20:60].min() == 1.0
    np.testing.assert_array_equal(
        to_original(cam, 64, 64, False), to_original(cam, 64, 64, False, (0, 0, 64, 64))
    )


def test_crop_and_mask_on_a_real_radiograph(shared_data: Path) -> None:
    image = load_image(sorted((shared_data / "figure1" / "images").iterdir())[0])
    full, box_none = prepare_with_box(image, Preprocess(size=64))
    crop, box = prepare_with_box(image, Preprocess(size=64, lungs="crop"))
    assert box_none == (0, 0, *image.shape[:2])
    top, left, rows, cols = box
    assert 0 <= top and 0 <= left and top + rows <= image.shape[0] and left + cols <= image.shape[1]
    assert rows * cols < 0.9 * image.shape[0] * image.shape[1]
    assert crop.shape == full.shape and not np.array_equal(crop, full)
    masked = prepare(image, Preprocess(size=64, lungs="mask"))
    corners = masked[[0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert len(set(corners.tolist())) == 1  # outside the lungs: one neutral value
    assert not np.array_equal(masked, crop)
