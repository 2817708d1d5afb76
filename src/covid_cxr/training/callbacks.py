"""Training callbacks of a run: one metrics.csv row per epoch, and checkpoints written atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from covid_cxr.io import atomic_write_bytes, atomic_write_text

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


class EpochMetricsCsv(L.Callback):
    """Keeps `metrics.csv` at one row per finished epoch (1-based), rewritten atomically each epoch.

    The row is written before the epoch's checkpoint, and a (resumed) fit first drops the rows of
    epochs its checkpoint has not finished, so after any crash and resume each epoch appears once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lr = math.nan

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write(self._rows_up_to(trainer.current_epoch))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        logged = trainer.callback_metrics
        row = {name: float(logged[name]) if name in logged else math.nan for name in METRIC_COLUMNS[1:5]}
        self._write([*self._rows_up_to(epoch - 1), {"epoch": epoch, **row, "lr": self._lr}])

    def _rows_up_to(self, last_epoch: int) -> list[dict[str, Any]]:
        """Existing rows of epochs 1..last_epoch."""
        if not self.path.is_file():
            return []
        frame = pd.read_csv(self.path)
        return frame[frame["epoch"] <= last_epoch].to_dict("records")

    def _write(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(index=False))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O, but a checkpoint file is replaced only once fully written."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
