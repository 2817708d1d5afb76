"""Accuracy and loss curves per epoch (train vs validation) from a run's metrics.csv (no pyplot state)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from covid_cxr.errors import DataError
from covid_cxr.io import atomic_write_bytes


def plot_curves(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Write the seeds' two-panel figure (accuracy, loss; train and validation) as a PNG."""
    frame = _read_metrics(Path(metrics_csv))
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        _panel(ax, frame, metric)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)


def _read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv with the columns the figure needs; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: no metrics file to plot")
    frame = pd.read_csv(path)
    needed = {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    if frame.empty or not needed <= set(frame.columns):
        raise DataError(f"{path}: expected per-epoch rows with columns {sorted(needed)}")
    return frame


def _panel(ax: Axes, frame: pd.DataFrame, metric: str) -> None:
    """One panel: train and validation values of `metric` over the epochs."""
    ax.plot(frame["epoch"], frame[f"train_{metric}"], marker="o", label="Train Set")
    ax.plot(frame["epoch"], frame[f"val_{metric}"], marker="o", label="Val Set")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = frame[[f"train_{metric}", f"val_{metric}"]].to_numpy()
    if metric == "loss" and (values[values == values] > 0).all():
        ax.set_yscale("log")  # a linear axis is all epoch 1
    ax.set_xlabel("Epochs")
    ax.set_ylabel(metric.capitalize() + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"Model {metric.capitalize()} over {len(frame)} Epochs")
    ax.grid(True)
    ax.legend(loc="best")
