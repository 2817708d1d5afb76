"""Lung-mask datasets: image/mask folder pairs or a CSV of ``path,mask``, and a fixed held-out split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from covid_cxr.data.images import load_image
from covid_cxr.data.preprocess import prepare
from covid_cxr.data.spec import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from covid_cxr.errors import DataError
from covid_cxr.lungs.augment import augment

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# the NLM sets name their files MCUCXR_* (Montgomery County, USA) and CHNCXR_* (Shenzhen, China)
SOURCE_PREFIXES = {"MCUCXR": "montgomery", "CHNCXR": "shenzhen"}
SPLIT_BUCKETS = {"test": (0, 1), "val": (2,)}  # of 10 hash buckets; the rest is train
_MEAN = np.array(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
_STD = np.array(IMAGENET_STD, np.float32).reshape(3, 1, 1)


def read_pairs(source: str | Path) -> pd.DataFrame:
    """A folder with ``images/`` and ``masks/`` (same file names), or a CSV with ``path,mask`` columns.

    Returns one row per pair: ``name, path, mask, source, split``; CSV paths are relative to the CSV.
    """
    source = Path(source)
    if source.is_file():
        frame = _read_csv(source)
    elif (source / "images").is_dir() and (source / "masks").is_dir():
        frame = _read_folders(source / "images", source / "masks")
    else:
        raise DataError(f"{source}: expected a folder with images/ and masks/, or a CSV with path,mask")
    if frame.empty:
        raise DataError(f"{source}: no image/mask pairs found")
    frame["name"] = [Path(p).stem for p in frame["path"]]
    frame["source"] = [source_of(n) for n in frame["name"]]
    frame["split"] = [split_of(n) for n in frame["name"]]
    return frame[["name", "path", "mask", "source", "split"]].reset_index(drop=True)


def source_of(name: str) -> str:
    """The origin named by a file's prefix (``MCUCXR_0001_0`` -> montgomery); else the prefix itself."""
    prefix = name.split("_", 1)[0]
    return SOURCE_PREFIXES.get(prefix, prefix.lower())


def split_of(name: str) -> str:
    """A fixed split from a hash of the file name: 20 % test, 10 % val, 70 % train, within every source."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return next((split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets), "train")


def load_pairs(frame: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images and 0/1 masks of the frame's rows, resized to ``size`` x ``size`` (uint8 N, H, W)."""
    spec = Preprocess(size=size, channels=1)
    images = np.stack([prepare(load_image(p), spec)[:, :, 0] for p in frame["path"]])
    masks = np.stack([resize_mask(_mask(p), size, size) for p in frame["mask"]])
    return images, masks


class LungPairs(Dataset):
    """(image, mask) tensors at ``out_size``: image ImageNet-normalised (3, H, W), mask (1, H, W) float."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, out_size: int, train: bool) -> None:
        self.images, self.masks, self.out_size, self.train = images, masks, out_size, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[idx], self.masks[idx]
        if self.train:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            image, mask = augment(image, mask, rng)
        image = cv2.resize(image, (self.out_size, self.out_size), interpolation=cv2.INTER_AREA)
        mask = resize_mask(mask, self.out_size, self.out_size)
        return to_input(image), torch.from_numpy(mask[None].astype(np.float32))


def to_input(grey: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) grey -> float32 (3, H, W) with ImageNet normalisation."""
    x = grey.astype(np.float32)[None] / 255.0
    return torch.from_numpy((x - _MEAN) / _STD)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A 0/1 (or 0/255) mask resized smoothly and thresholded at half: uint8 0/1."""
    soft = cv2.resize((mask > 0).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return (soft >= 0.5).astype(np.uint8)


def _mask(path: str) -> np.ndarray:
    """A mask file as uint8 0/1 (H, W): pixels above 127 are lung."""
    arr = load_image(path)
    grey = arr if arr.ndim == 2 else arr.max(axis=2)
    return (grey > 127).astype(np.uint8)


def _read_folders(images: Path, masks: Path) -> pd.DataFrame:
    """Pairs by file name; an image without a mask is an error naming it."""
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = [p.name for p in files if not (masks / p.name).is_file()]
    if missing:
        raise DataError(f"{masks}: no mask for {len(missing)} images, e.g. {missing[0]}")
    return pd.DataFrame({"path": [str(p) for p in files], "mask": [str(masks / p.name) for p in files]})


def _read_csv(path: Path) -> pd.DataFrame:
    """``path,mask`` rows, relative paths resolved against the CSV's folder."""
    frame = pd.read_csv(path)
    if not {"path", "mask"} <= set(frame.columns):
        raise DataError(f"{path}: a lung-mask CSV needs columns path and mask, has {list(frame.columns)}")
    base = path.parent
    return pd.DataFrame({col: [str(base / p) for p in frame[col]] for col in ("path", "mask")})
