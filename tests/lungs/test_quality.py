"""Mask clean-up, plausibility flags and Dice/IoU."""

from __future__ import annotations

import numpy as np
import torch

from covid_cxr.lungs.quality import clean_mask, lung_stats, overlay
from covid_cxr.lungs.train import dice_iou


def two_lungs(size: int = 100) -> np.ndarray:
    """Two rectangles left and right of centre, each 12 % of the image."""
    mask = np.zeros((size, size), np.uint8)
    mask[20:80, 15:35] = 1
    mask[20:80, 65:85] = 1
    return mask


def test_two_lungs_are_ok() -> None:
    stats = lung_stats(two_lungs())
    assert stats.components == 2 and stats.quality == "ok"
    assert stats.area_fraction == 0.24


def test_implausible_masks_say_why() -> None:
    one = two_lungs()
    one[:, 50:] = 0
    assert lung_stats(one).quality == "1 components, expected 2"
    assert lung_stats(np.zeros((50, 50), np.uint8)).quality == "no lungs found"
    same_side = np.zeros((100, 100), np.uint8)
    same_side[10:40, 5:30], same_side[60:90, 5:30] = 1, 1
    assert lung_stats(same_side).quality == "both components on one side"
    tiny = np.zeros((100, 100), np.uint8)
    tiny[40:45, 20:25], tiny[40:45, 70:75] = 1, 1
    assert "outside" in lung_stats(tiny).quality


def test_clean_mask_drops_specks_and_fills_holes() -> None:
    mask = two_lungs()
    mask[50, 25] = 0  # a hole
    mask[2:4, 2:4] = 1  # a speck
    mask[90:95, 45:55] = 1  # a third, smaller component (0.5 %)
    cleaned = clean_mask(mask)
    assert np.array_equal(cleaned, two_lungs())


def test_dice_and_iou() -> None:
    a = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    a[0, 0, :2], b[0, 0, 1:3] = True, True  # 8 and 8 pixels, 4 shared
    dice, iou = dice_iou(a, b)
    assert torch.allclose(dice, torch.tensor([0.5, 1.0]))
    assert torch.allclose(iou, torch.tensor([1 / 3, 1.0]))


def test_overlay_is_rgb_and_tints_the_lungs() -> None:
    image = np.full((100, 100), 100, np.uint8)
    out = overlay(image, two_lungs())
    assert out.shape == (100, 100, 3)
    assert out[50, 25, 1] > out[50, 25, 0] and tuple(out[50, 50]) == (100, 100, 100)
