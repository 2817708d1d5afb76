"""Learning-rate range test (seed 000's LR schedule plot) with Lightning's Tuner.lr_find.

The rate suggested is the steepest descent of the smoothed loss before its minimum (Smith 2017,
"Cyclical learning rates"; fastai's ``steep``): where the loss falls fastest, not where the noisy
first steps or the divergence after the minimum happen to have the largest slope.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.tuner import Tuner
from matplotlib.figure import Figure

from covid_cxr.config import RunConfig
from covid_cxr.errors import CxrError
from covid_cxr.io import atomic_write_bytes
from covid_cxr.training.train import build_stage, prepare_manifest

log = logging.getLogger(__name__)

PLOT_NAME = "lr_find.png"


def lr_find(
    cfg: RunConfig,
    data: str | Path | None,
    out: str | Path,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_training: int = 100,
    cache_dir: str | Path | None = None,
) -> tuple[float, Path]:
    """Train briefly with an exponentially rising LR; return the suggested LR and out/lr_find.png."""
    folder = Path(out)
    stage = build_stage(cfg, prepare_manifest(cfg, data, folder), cache_dir)
    t = stage.cfg.train
    trainer = L.Trainer(
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=1,
        precision=t.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    finder = Tuner(trainer).lr_find(
        stage.module,
        datamodule=stage.datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        update_attr=False,
    )
    lrs, losses = (finder.results["lr"], finder.results["loss"]) if finder is not None else ([], [])
    suggested = steepest_descent(lrs, losses)
    if suggested is None:
        raise CxrError(
            f"the LR range test between {min_lr} and {max_lr} gave too few points to suggest a rate; "
            "lower max_lr or raise num_training"
        )
    plot = plot_lr_range(lrs, losses, suggested, folder / PLOT_NAME)
    log.info("suggested learning rate %.3g (plot %s)", suggested, plot)
    return float(suggested), plot


def smooth(losses: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (edges averaged over the points that exist)."""
    kernel = np.ones(window)
    return np.convolve(losses, kernel, "same") / np.convolve(np.ones_like(losses), kernel, "same")


def steepest_descent(lrs: list[float], losses: list[float], min_points: int = 10) -> float | None:
    """The LR where the smoothed loss falls fastest (per decade of LR) before the smoothed minimum.

    None when there are too few finite points, or the loss never falls.
    """
    lr, loss = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    keep = np.isfinite(loss) & (lr > 0)
    lr, loss = lr[keep], loss[keep]
    if len(lr) < min_points:
        return None
    smoothed = smooth(loss, max(3, len(loss) // 20))
    skip, lowest = descent_window(smoothed)
    if lowest - skip < 2:
        return None
    slope = np.gradient(smoothed[skip : lowest + 1], np.log10(lr[skip : lowest + 1]))
    steepest = int(np.argmin(slope))
    return float(lr[skip + steepest]) if slope[steepest] < 0 else None


def descent_window(smoothed: np.ndarray) -> tuple[int, int]:
    """(start, minimum) of the descent: after the first steps' noise and any early rise, to the lowest loss.

    The first tenth is noise (Lightning's skip_begin is 10 of 100); when the running average first
    climbs (a lucky first batch), the descent starts at that early peak, within the first half.
    """
    n = len(smoothed)
    start = max(n // 10, int(np.nanargmax(smoothed[: max(1, n // 2)])))
    return start, start + int(np.nanargmin(smoothed[start:]))


def plot_lr_range(lrs: list[float], losses: list[float], suggested: float, path: Path) -> Path:
    """Loss against learning rate (log axis), smoothed curve, suggestion and minimum marked, as PNG."""
    lr, loss = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    smoothed = smooth(loss, max(3, len(loss) // 20))
    _, lowest = descent_window(smoothed)
    at = int(np.argmin(np.abs(np.log(lr) - np.log(suggested))))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.plot(lr, loss, color="0.7", linewidth=1, label="loss (Lightning's running average)")
    ax.plot(lr, smoothed, color="C0", linewidth=2, label="smoothed")
    ax.plot(lr[at], smoothed[at], "o", color="red", label=f"suggested {suggested:.2g} (steepest descent)")
    ax.plot(lr[lowest], smoothed[lowest], "v", color="0.3", label=f"minimum at {lr[lowest]:.2g}")
    ax.axvline(suggested, color="red", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    top = np.nanpercentile(loss[: lowest + 1], 99) if lowest > 0 else np.nanmax(loss)
    ax.set_ylim(np.nanmin(loss) - 0.05 * abs(top), top + 0.25 * abs(top - np.nanmin(loss)))
    ax.set_xlabel("Learning rate (log scale)")
    ax.set_ylabel("Training loss")
    ax.set_title("Learning rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path
