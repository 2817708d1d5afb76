"""Learning-rate range test (seed 000's LR schedule plot) with Lightning's Tuner.lr_find."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import lightning as L
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
    suggested = finder.suggestion() if finder is not None else None
    if suggested is None:
        raise CxrError(
            f"the LR range test between {min_lr} and {max_lr} gave too few points to suggest a rate; "
            "lower max_lr or raise num_training"
        )
    plot = plot_lr_range(finder.results["lr"], finder.results["loss"], suggested, folder / PLOT_NAME)
    log.info("suggested learning rate %.3g (plot %s)", suggested, plot)
    return float(suggested), plot


def plot_lr_range(lrs: list[float], losses: list[float], suggested: float, path: Path) -> Path:
    """Loss against learning rate (log axis) with the suggestion marked, written atomically as PNG."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Loss")
    ax.set_title("Learning rate range test")
    ax.grid(True)
    ax.legend(loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path
