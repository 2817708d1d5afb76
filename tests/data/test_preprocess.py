"""Preprocessing: seed 002 white balance, CLAHE, resize/letterbox, channels, normalisation, stats."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from covid_cxr.data.preprocess import dataset_stats, normalize, prepare, preprocess
from covid_cxr.data.spec import IMAGENET_MEAN, IMAGENET_STD, Clahe, Preprocess
from covid_cxr.errors import ConfigError, DataError


def random_rgb(height: int = 48, width: int = 48, seed: int = 0) -> np.ndarray:
    """A fixed random RGB image whose channels differ."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def seed_002(bgr: np.ndarray, size: int, perc: float = 0.05) -> np.ndarray:
    """Seed 002's code, verbatim in its operations: wb per channel -> BGR2GRAY -> GRAY2RGB -> resize."""

    def wb(channel: np.ndarray, perc: float) -> np.ndarray:
        mi, ma = (np.percentile(channel, perc), np.percentile(channel, 100.0 - perc))
        return np.uint8(np.clip((channel - mi) * 255.0 / (ma - mi), 0, 255))

    im_wb = np.dstack([wb(channel, perc) for channel in cv2.split(bgr)])
    gray_image = cv2.cvtColor(im_wb, cv2.COLOR_BGR2GRAY)
    img = cv2.cvtColor(gray_image, cv2.COLOR_GRAY2RGB)
    return cv2.resize(img, (size, size))


@pytest.mark.parametrize("size", [48, 80])  # same size, and enlarging (both INTER_LINEAR)
def test_white_balance_reproduces_seed_002(size: int) -> None:
    rgb = random_rgb()
    before = rgb.copy()
    spec = Preprocess(size=size, channels=3, white_balance=0.05)
    out = prepare(rgb, spec)
    expected = seed_002(np.ascontiguousarray(rgb[:, :, ::-1]), size)  # cv2.imread gives BGR
    assert out.dtype == np.uint8 and out.shape == (size, size, 3)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(rgb, before)


def test_white_balance_stretches_a_dark_image_and_leaves_flat_ones() -> None:
    dark = (random_rgb(seed=1)[:, :, 0] // 4).astype(np.uint8)  # values 0..63
    out = prepare(dark, Preprocess(size=48, channels=1, white_balance=0.0))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    flat = np.full((48, 48), 90, np.uint8)
    np.testing.assert_array_equal(
        prepare(flat, Preprocess(size=48, channels=1, white_balance=1.0))[..., 0], flat
    )


def test_grey_inputs_of_every_layout_agree() -> None:
    grey = random_rgb(seed=2)[:, :, 0]
    spec = Preprocess(size=32, channels=3)
    a = prepare(grey, spec)
    np.testing.assert_array_equal(a, prepare(grey[:, :, None], spec))
    np.testing.assert_array_equal(a, prepare(np.dstack([grey] * 3), spec))
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    one = prepare(grey, Preprocess(size=32, channels=1))
    assert one.shape == (32, 32, 1)
    np.testing.assert_array_equal(one[..., 0], a[..., 0])
    np.testing.assert_array_equal(one[..., 0], cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA))


def test_clahe_is_opencv_clahe_on_the_grey_image() -> None:
    rgb = random_rgb(64, 64, seed=3)
    out = prepare(rgb, Preprocess(size=64, channels=1, clahe=Clahe(clip_limit=3.0, tile_grid=4)))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(grey)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert not np.array_equal(out[..., 0], grey)


@pytest.mark.parametrize("shape", [(20, 40), (40, 20), (30, 30)])
def test_keep_aspect_letterboxes_the_image_centred(shape: tuple[int, int]) -> None:
    height, width = shape
    out = prepare(np.full(shape, 255, np.uint8), Preprocess(size=32, keep_aspect=True, channels=1))[..., 0]
    scale = 32 / max(height, width)
    rows, cols = round(height * scale), round(width * scale)
    top, left = (32 - rows) // 2, (32 - cols) // 2
    mask = np.zeros((32, 32), bool)
    mask[top : top + rows, left : left + cols] = True
    assert (out[mask] == 255).all() and (out[~mask] == 0).all()
    stretched = prepare(np.full(shape, 255, np.uint8), Preprocess(size=32, channels=1))
    assert (stretched == 255).all()


def test_bad_images_are_refused() -> None:
    spec = Preprocess(size=16)
    for bad in (np.zeros((8, 8), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8), np.uint8)):
        with pytest.raises(DataError, match="expected a uint8 image"):
            prepare(bad, spec)


def test_normalize_unit_and_layout() -> None:
    batch = torch.from_numpy(np.stack([random_rgb(8, 6, seed=s) for s in range(4)]))  # NHWC
    out = normalize(batch, Preprocess(normalize="unit"))
    assert out.dtype == torch.float32 and out.shape == (4, 3, 8, 6)
    torch.testing.assert_close(out, batch.permute(0, 3, 1, 2).float() / 255)
    assert out.is_contiguous(memory_format=torch.channels_last)
    single = normalize(batch[0].numpy(), Preprocess(normalize="unit"))
    torch.testing.assert_close(single, out[0])


def test_normalize_imagenet_values() -> None:
    pixel = np.array([[[255, 0, 128]]], np.uint8)
    out = normalize(pixel, Preprocess(normalize="imagenet"))[:, 0, 0]
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(out, torch.tensor(expected))
    grey = normalize(np.array([[[255]]], np.uint8), Preprocess(normalize="imagenet", channels=1))
    torch.testing.assert_close(
        grey.flatten(),
        torch.tensor([(1 - np.mean(IMAGENET_MEAN)) / np.mean(IMAGENET_STD)], dtype=torch.float32),
    )


def test_normalize_dataset_needs_mean_and_std() -> None:
    pixel = np.array([[[51, 102, 204]]], np.uint8)
    with pytest.raises(ConfigError, match="preprocess.mean"):
        normalize(pixel, Preprocess(normalize="dataset"))
    spec = Preprocess(normalize="dataset", mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2))
    out = normalize(pixel, spec)[:, 0, 0]
    torch.testing.assert_close(out, torch.tensor([(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.8 - 0.3) / 0.2]))
    with pytest.raises(ConfigError, match="3 means"):
        normalize(np.zeros((2, 2, 1), np.uint8), spec)
    with pytest.raises(DataError, match="uint8"):
        normalize(np.zeros((2, 2, 3), np.float32), spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_normalize_on_the_gpu_matches_the_cpu() -> None:
    batch = torch.from_numpy(np.stack([random_rgb(16, 16, seed=s) for s in range(3)]))
    spec = Preprocess(normalize="imagenet")
    gpu = normalize(batch.cuda(), spec)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), normalize(batch, spec))


def test_preprocess_is_normalize_of_prepare() -> None:
    rgb = random_rgb(40, 30, seed=5)
    spec = Preprocess(size=24, white_balance=0.5, normalize="imagenet")
    out = preprocess(rgb, spec)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, normalize(prepare(rgb, spec), spec))


def test_dataset_stats_match_numpy_over_several_chunks() -> None:
    images = np.random.default_rng(6).integers(0, 256, (300, 5, 4, 3), dtype=np.uint8)  # 2 chunks of 256
    images[..., 1] //= 2
    mean, std = dataset_stats(images)
    as_float = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, as_float.mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(std, as_float.std(axis=(0, 1, 2)), rtol=1e-8)
    spec = Preprocess(normalize="dataset", mean=mean, std=std)
    normed = normalize(images, spec)
    torch.testing.assert_close(normed.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    with pytest.raises(DataError):
        dataset_stats(np.zeros((0, 4, 4, 3), np.uint8))
