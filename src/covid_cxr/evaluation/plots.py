"""Evaluation figures as PNGs: confusion matrices, ROC and PR curves, reliability diagram (no pyplot)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from covid_cxr.io import atomic_write_bytes

FIGURES = {
    "confusion_matrix": "confusion_matrix.png",
    "confusion_matrix_normalized": "confusion_matrix_normalized.png",
    "roc": "roc.png",
    "pr": "pr.png",
    "reliability": "reliability.png",
}


def write_figures(summary: dict, calibration: dict, out_dir: str | Path, title: str = "") -> dict[str, str]:
    """Write every figure of an evaluation into `out_dir`; returns figure name -> file name."""
    out = Path(out_dir)
    classes = summary["classes"]
    cm = summary["confusion_matrix"]
    plot_confusion_matrix(np.array(cm["counts"]), classes, out / FIGURES["confusion_matrix"], title=title)
    plot_confusion_matrix(
        np.array(cm["normalized"]),
        classes,
        out / FIGURES["confusion_matrix_normalized"],
        normalized=True,
        title=title,
    )
    plot_roc(summary["roc"], classes, out / FIGURES["roc"], title=title)
    plot_pr(summary["pr"], classes, out / FIGURES["pr"], title=title)
    plot_reliability(calibration, out / FIGURES["reliability"], title=title)
    return dict(FIGURES)


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: str | Path, normalized: bool = False, title: str = ""
) -> Path:
    """Seed 002's confusion matrix: true label rows, predicted label columns, the value in each cell."""
    fig = Figure(figsize=(1.2 * len(classes) + 3, 1.1 * len(classes) + 2.5))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else max(1, matrix.max()))
    fig.colorbar(image, ax=ax)
    threshold = (1 if normalized else matrix.max()) / 2
    for (i, j), value in np.ndenumerate(matrix):
        text = f"{value:.2f}" if normalized else f"{int(value)}"
        ax.text(j, i, text, ha="center", va="center", color="white" if value > threshold else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(_title("Confusion matrix" + (" (row-normalised)" if normalized else ""), title))
    return _save(fig, path)


def plot_roc(roc: dict, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Seed 002's ROC figure: one curve per class, micro and macro averages, the chance diagonal."""
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    for key, style in (("micro", ":"), ("macro", ":")):
        if roc.get(key):
            ax.plot(
                roc[key]["fpr"],
                roc[key]["tpr"],
                linestyle=style,
                linewidth=3,
                label=f"{key}-average ROC (area = {roc[key]['auc']:.2f})",
            )
    for name in classes:
        if roc.get(name):
            label = f"{name} (area = {roc[name]['auc']:.2f})"
            ax.plot(roc[name]["fpr"], roc[name]["tpr"], linewidth=2, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    _unit_axes(ax, "False positive rate", "True positive rate")
    ax.set_title(_title("ROC curves (one vs rest)", title))
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(pr: dict, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Precision-recall curve per class and micro-averaged, with average precision in the legend."""
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    if pr.get("micro"):
        ax.plot(
            pr["micro"]["recall"],
            pr["micro"]["precision"],
            linestyle=":",
            linewidth=3,
            label=f"micro-average (AP = {pr['micro']['average_precision']:.2f})",
        )
    for name in classes:
        if pr.get(name):
            ax.plot(
                pr[name]["recall"],
                pr[name]["precision"],
                linewidth=2,
                label=f"{name} (AP = {pr[name]['average_precision']:.2f})",
            )
    _unit_axes(ax, "Recall", "Precision")
    ax.set_title(_title("Precision-recall curves", title))
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_reliability(calibration: dict, path: str | Path, title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    runs = [("before", "T = 1"), ("after", f"T = {calibration['temperature']:.2f}")]
    for key, label in runs if calibration["temperature"] != 1 else runs[:1]:
        bins = [b for b in calibration[f"reliability_{key}"] if b["count"]]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{label} (ECE {calibration[f'ece_{key}']:.3f})",
        )
    _unit_axes(ax, "Confidence (top-class probability)", "Accuracy")
    ax.set_title(_title("Reliability diagram", title))
    ax.legend(loc="upper left")
    return _save(fig, path)


def _unit_axes(ax: Axes, xlabel: str, ylabel: str) -> None:
    """[0, 1] x [0, 1.05] axes with labels and a grid."""
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _title(what: str, title: str) -> str:
    """`what`, prefixed by the run or dataset title when there is one."""
    return f"{title}: {what}" if title else what


def _save(fig: Figure, path: str | Path) -> Path:
    """Render with the Agg canvas and write the PNG atomically."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
