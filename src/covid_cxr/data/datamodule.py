"""LightningDataModule over cached arrays: uint8 images (normalised and augmented on device) or features."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from covid_cxr.errors import DataError

log = logging.getLogger(__name__)

OnDevice = Callable[[torch.Tensor], torch.Tensor]
DEVICE_CACHE_FRACTION = 0.25  # the cache moves to the GPU when it needs at most this share of free memory
_COPY_ROWS = 1024  # rows per host-to-GPU copy when moving the cache


class IndexedArrays(Dataset):
    """Rows `indices` of an array (a uint8 image memmap or a feature tensor) with their integer labels."""

    def __init__(self, inputs: np.ndarray | torch.Tensor, labels: np.ndarray, indices: np.ndarray) -> None:
        self.inputs = inputs
        device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long).to(device)  # once per loader
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[item])
        x = self.inputs[row]
        return (torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x), self.labels[row]

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch with one gather (one memmap read, or one index on the array's device).

        On a GPU nothing here waits for the device: the row numbers are the only host-to-device
        copy, and it does not block, so the next step queues while the current one runs.
        """
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        if isinstance(self.inputs, torch.Tensor):
            index = torch.from_numpy(rows).to(self.inputs.device, non_blocking=True)
            return self.inputs[index], self.labels[index]
        return torch.from_numpy(np.ascontiguousarray(self.inputs[rows])), self.labels[torch.from_numpy(rows)]


def _batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for IndexedArrays.__getitems__, which already returns the stacked batch."""
    return batch


class CxrDataModule(L.LightningDataModule):
    """Train/val/test loaders over one cached array, split by row positions.

    Batches leave the loader as stored (uint8 NHWC images or float features); once on the device,
    `prepare` (e.g. normalisation) runs on every batch and `augment` on training batches only.
    A 4-D result is made channels_last. With `balance_sampler`, training draws a
    WeightedRandomSampler (inverse class frequency, or inverse frequency of the row's `strata` cell, e.g.
    its (source, class)); otherwise it shuffles with a seeded generator.
    On a CUDA trainer without loader workers, the array moves to the GPU once when it fits in
    DEVICE_CACHE_FRACTION of the free memory, so batches are gathered there and nothing is copied per step;
    otherwise batches are pinned so that their copy to the GPU does not block.
    """

    def __init__(
        self,
        inputs: np.ndarray | torch.Tensor,
        labels: np.ndarray,
        splits: Mapping[str, np.ndarray],
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 42,
        prepare: OnDevice | None = None,
        augment: nn.Module | None = None,
        balance_sampler: bool = False,
        strata: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if not len(splits.get("train", ())) or not len(splits.get("val", ())):
            raise DataError("training needs non-empty train and val splits")
        self.inputs, self.labels, self.splits = inputs, np.asarray(labels), dict(splits)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.prepare_batch, self.augment, self.balance_sampler = prepare, augment, balance_sampler
        self.strata = None if strata is None else np.asarray(strata)
        self.pin_memory = False

    def setup(self, stage: str) -> None:
        """Move the array to the trainer's CUDA device when it fits (see the class docstring)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is None or device.type != "cuda":
            return
        if isinstance(self.inputs, torch.Tensor) and self.inputs.device == device:
            return
        free, _ = torch.cuda.mem_get_info(device)
        if self.num_workers > 0 or self.inputs.nbytes > DEVICE_CACHE_FRACTION * free:
            log.info(
                "cached array (%.1f GB) stays in host memory; batches are pinned", self.inputs.nbytes / 1e9
            )
            self.pin_memory = True
            return
        self.inputs = _to_device(self.inputs, device)
        log.info("cached array %s moved to %s", tuple(self.inputs.shape), device)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        sampler = self._sampler(generator) if self.balance_sampler else None
        return self._loader("train", shuffle=sampler is None, sampler=sampler, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Normalise (and, when training, augment) the batch on its device."""
        x, y = batch
        if self.prepare_batch is not None:
            x = self.prepare_batch(x)
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _loader(
        self,
        split: str,
        shuffle: bool = False,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        dataset = IndexedArrays(self.inputs, self.labels, self.splits.get(split, np.zeros(0, dtype=int)))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=_batch,
        )

    def _sampler(self, generator: torch.Generator) -> WeightedRandomSampler:
        """Draw training rows with probability inversely proportional to their cell's size.

        A cell is the row's class, or its entry of `strata` (e.g. one per (source, class)) when given.
        """
        y = (self.labels if self.strata is None else self.strata)[self.splits["train"]]
        counts = np.bincount(y)
        weights = 1.0 / counts[y]
        return WeightedRandomSampler(
            weights.tolist(), num_samples=len(y), replacement=True, generator=generator
        )


def _to_device(inputs: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of `inputs` on `device`, read from a memory map in chunks so host memory stays bounded."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    chunks = range(0, len(inputs), _COPY_ROWS)
    return torch.cat([torch.from_numpy(np.array(inputs[i : i + _COPY_ROWS])).to(device) for i in chunks])
