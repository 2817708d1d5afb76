"""CxrDataModule batches: one gather per batch from a memmap or a tensor, and the GPU-resident cache."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from covid_cxr.config import AugmentConfig
from covid_cxr.data.augment import TensorAugment
from covid_cxr.data.datamodule import CxrDataModule, IndexedArrays
from covid_cxr.data.preprocess import normalize
from covid_cxr.data.spec import Preprocess


@pytest.fixture()
def memmap(tmp_path: Path) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "cache.npy", images)
    return np.load(tmp_path / "cache.npy", mmap_mode="r")


@pytest.mark.parametrize("kind", ["memmap", "tensor"])
def test_a_batch_gather_equals_the_items_stacked(memmap: np.ndarray, kind: str) -> None:
    inputs = memmap if kind == "memmap" else torch.from_numpy(np.array(memmap))
    labels = np.arange(20) % 3
    dataset = IndexedArrays(inputs, labels, indices=np.array([19, 3, 7, 0, 11]))
    x, y = dataset.__getitems__([4, 0, 2])
    items = [dataset[i] for i in (4, 0, 2)]
    assert torch.equal(x, torch.stack([xi for xi, _ in items])) and x.dtype == torch.uint8
    assert y.tolist() == [int(yi) for _, yi in items] == [labels[11], labels[19], labels[7]]


def test_loader_batches_pair_each_image_with_its_label(memmap: np.ndarray) -> None:
    labels = np.arange(20)
    dm = CxrDataModule(memmap, labels, {"train": np.arange(20), "val": np.arange(2)}, batch_size=6, seed=1)
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [6, 6, 6, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(20)) and seen.tolist() != list(range(20))
    for x, y in batches:
        assert torch.equal(x, torch.from_numpy(np.array(memmap))[y])


def test_setup_keeps_the_array_on_the_host_for_a_cpu_trainer(memmap: np.ndarray) -> None:
    dm = CxrDataModule(memmap, np.zeros(20, int), {"train": np.arange(20), "val": np.arange(2)})
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    dm.setup("fit")
    assert dm.inputs is memmap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_setup_moves_the_cache_to_the_gpu_and_gathers_batches_there(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.arange(20, dtype=np.uint8)[:, None, None, None].repeat(4, axis=1))
    images = np.load(tmp_path / "rows.npy", mmap_mode="r")  # every pixel of row i is i
    labels = np.arange(20) % 3
    dm = CxrDataModule(images, labels, {"train": np.arange(20), "val": np.arange(2)}, batch_size=8)
    dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False)
    dm.setup("fit")
    assert isinstance(dm.inputs, torch.Tensor) and dm.inputs.is_cuda
    x, y = next(iter(dm.train_dataloader()))
    assert x.is_cuda and y.is_cuda and x.shape == (8, 4, 1, 1)
    rows = x[:, 0, 0, 0].long().cpu()
    assert y.cpu().tolist() == [int(labels[r]) for r in rows]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_training_batches_never_wait_for_the_device() -> None:
    spec = Preprocess(size=16, channels=3, normalize="imagenet")
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8, device="cuda")
    augment = TensorAugment(AugmentConfig(rotation=10, zoom=0.1, channel_shift=5, fill_mode="constant"), spec)
    dm = CxrDataModule(
        images,
        np.arange(40) % 3,
        {"train": np.arange(40), "val": np.arange(4)},
        batch_size=8,
        prepare=partial(normalize, spec=spec),
        augment=augment,
    )
    dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False)
    dm.trainer.training = True
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any blocking copy or .item() raises
    try:
        for batch in dm.train_dataloader():
            x, y = dm.on_after_batch_transfer(batch, 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cache_too_big_for_the_gpu_stays_on_the_host_with_pinned_batches(
    memmap: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("covid_cxr.data.datamodule.DEVICE_CACHE_FRACTION", 0.0)
    dm = CxrDataModule(memmap, np.zeros(20, int), {"train": np.arange(20), "val": np.arange(2)}, batch_size=4)
    dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False)
    dm.setup("fit")
    assert dm.inputs is memmap
    x, y = next(iter(dm.train_dataloader()))
    assert x.is_pinned() and y.is_pinned()
