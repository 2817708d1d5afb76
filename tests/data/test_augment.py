"""Batched Keras-style augmentation: parameter ranges, directions, fill modes and flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covid_cxr.config import AugmentConfig
from covid_cxr.data.augment import TensorAugment, random_affine
from covid_cxr.data.preprocess import normalize
from covid_cxr.data.spec import Preprocess

SPEC = Preprocess(size=32, channels=1, normalize="dataset", mean=(0.5,), std=(0.25,))


def _pixels(value: int, size: int = 32, n: int = 1) -> torch.Tensor:
    return normalize(np.full((n, size, size, 1), value, dtype=np.uint8), SPEC)


def test_random_affine_draws_keras_ranges_per_image() -> None:
    torch.manual_seed(0)
    rotation = random_affine(AugmentConfig(rotation=20), 4000)
    angles = torch.rad2deg(torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0]))
    assert angles.abs().max() <= 20 + 1e-4 and angles.min() < -19 and angles.max() > 19
    shift = random_affine(AugmentConfig(width_shift=0.1, height_shift=0.3), 4000)
    assert shift[:, 0, 2].abs().max() <= 0.2 + 1e-6 and shift[:, 0, 2].abs().max() > 0.19
    assert shift[:, 1, 2].abs().max() <= 0.6 + 1e-6 and shift[:, 1, 2].abs().max() > 0.59
    zoom = random_affine(AugmentConfig(zoom=0.2), 4000)
    zx, zy = zoom[:, 0, 0], zoom[:, 1, 1]
    assert zx.min() >= 0.8 - 1e-6 and zx.max() <= 1.2 + 1e-6
    assert abs(float(torch.corrcoef(torch.stack([zx, zy]))[0, 1])) < 0.1  # Keras draws each axis apart
    shear = random_affine(AugmentConfig(shear=30), 4000)
    assert torch.rad2deg(torch.asin(-shear[:, 0, 1])).abs().max() <= 30 + 1e-3


def test_width_shift_moves_a_bar_sideways_only() -> None:
    image = _pixels(0)
    image[..., 12:20] = _pixels(255)[..., 12:20]  # a bright vertical bar in columns 12-19
    batch = image.repeat(64, 1, 1, 1)
    torch.manual_seed(1)
    out = TensorAugment(AugmentConfig(width_shift=0.25, fill_mode="nearest"), SPEC)(batch)
    centres = (out[:, 0].mean(dim=1) * torch.arange(32)).sum(dim=1) / out[:, 0].mean(dim=1).sum(dim=1)
    assert float(centres.std()) > 2  # the bar moved, by a different amount per image
    rows = out[:, 0].mean(dim=2)
    assert torch.allclose(rows, rows[:, :1].expand_as(rows), atol=1e-5)  # nothing moved vertically


@pytest.mark.parametrize(("mode", "has_black"), [("constant", True), ("nearest", False), ("reflect", False)])
def test_fill_mode_decides_what_uncovered_areas_show(mode: str, has_black: bool) -> None:
    white = _pixels(255, n=16)
    torch.manual_seed(2)
    out = TensorAugment(AugmentConfig(rotation=45, zoom=0.5, fill_mode=mode), SPEC)(white)
    black = float(_pixels(0).flatten()[0])
    assert bool((out - black).abs().lt(1e-4).any()) is has_black
    if not has_black:
        assert torch.allclose(out, white, atol=1e-5)


def test_flips_are_drawn_per_image() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    batch = image.repeat(64, 1, 1, 1)
    torch.manual_seed(3)
    out = TensorAugment(AugmentConfig(horizontal_flip=True), SPEC)(batch)
    flipped = torch.tensor([torch.equal(o, image[0].flip(-1)) for o in out])
    kept = torch.tensor([torch.equal(o, image[0]) for o in out])
    assert bool((flipped | kept).all()) and 16 < int(flipped.sum()) < 48


def test_identity_config_returns_the_batch_untouched() -> None:
    batch = torch.randn(4, 1, 32, 32)
    assert torch.equal(TensorAugment(AugmentConfig(), SPEC)(batch), batch)
