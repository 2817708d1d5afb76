"""What a run tells its user while it trains: a bar per epoch, one summary line per epoch, how it ended.

``EpochSummary`` logs one line per finished epoch (as Keras leaves one), says when early stopping
ended the run and which epoch was best; ``EpochBar`` is Lightning's rich bar counting epochs from 1,
without the logger version or metrics that wrap at 80 columns; ``StopOnInterrupt`` turns Ctrl-C into
``TrainingInterrupted`` so that the run can write its bundle from the best checkpoint so far.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar

from covid_cxr.errors import TrainingInterrupted

log = logging.getLogger(__name__)

_SHOWN = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}


class EpochSummary(L.Callback):
    """One INFO line per epoch (losses, accuracies, LR, best so far) and the reason training ended."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min") -> None:
        self.monitor, self.mode = monitor, mode
        self.history: list[dict[str, float]] = []
        self._lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = _lr(trainer)
        if trainer.is_global_zero:
            log.info(
                "training %d epochs from epoch %d, lr %.0e",
                trainer.max_epochs,
                trainer.current_epoch + 1,
                self._lr or 0,
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.history.append(logged)
        best = self.best_epoch(self.monitor, self.mode) == len(self.history)
        log.info("%s", self.line(trainer.current_epoch + 1, trainer.max_epochs, logged, best))
        lr = _lr(trainer)
        if lr is not None and self._lr is not None and lr != self._lr:  # a plateau scheduler acted
            log.info("learning rate %.1e -> %.1e", self._lr, lr)
        self._lr = lr

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        if stopper is not None and trainer.should_stop and stopper.wait_count >= stopper.patience:
            stopped = stopper.stopped_epoch + 1  # Lightning's is 0-based
            log.info(
                "stopped early at epoch %d: %s has not improved since epoch %d (best)",
                stopped,
                stopper.monitor,
                stopped - stopper.wait_count,
            )
        elif (best := self.best_epoch(self.monitor, self.mode)) is not None:
            log.info(
                "trained %d epochs; best %s %.4g at epoch %d",
                len(self.history),
                self.monitor,
                self.history[best - 1][self.monitor],
                best,
            )

    def best_epoch(self, monitor: str, mode: str) -> int | None:
        """The 1-based epoch of this fit with the best `monitor` value, None when never logged."""
        values = [(h.get(monitor, math.nan), i) for i, h in enumerate(self.history, start=1)]
        values = [(v if mode == "min" else -v, i) for v, i in values if not math.isnan(v)]
        return min(values)[1] if values else None

    @staticmethod
    def line(epoch: int, epochs: int, logged: dict[str, float], best: bool) -> str:
        """'epoch  3/10  loss 0.412 acc 0.850  val_loss 0.301 val_acc 0.900 *' (* = best so far).

        At most 71 characters, so that the line fits 80 columns after the log level.
        """
        width = len(str(epochs))
        train = " ".join(f"{s} {logged[n]:.3f}" for n, s in _SHOWN.items() if n in logged and "val" not in n)
        val = " ".join(f"{s} {logged[n]:.3f}" for n, s in _SHOWN.items() if n in logged and "val" in n)
        parts = [f"epoch {epoch:>{width}}/{epochs}", train, val]
        return "  ".join(p for p in parts if p) + (" *" if best else "")


def _lr(trainer: L.Trainer) -> float | None:
    """The first optimizer's current learning rate."""
    return float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None


class EpochBar(RichProgressBar):
    """Lightning's rich progress bar, epochs counted 1..N, no logger version or metrics on the bar."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"epoch {current_epoch + 1}/{self.trainer.max_epochs}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {}  # the epoch's figures are in EpochSummary's line, which stays


class StopOnInterrupt(L.Callback):
    """Ctrl-C: raise TrainingInterrupted (epoch reached, of how many) instead of Lightning's exit(1).

    Add it after the progress bar, so the bar is stopped first.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            raise TrainingInterrupted(trainer.current_epoch + 1, trainer.max_epochs) from None
