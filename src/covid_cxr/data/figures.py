"""Inspection figures: class counts, size and intensity histograms, sample grids per class."""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from covid_cxr.data.checks import CheckReport, to_grey, usable_manifest
from covid_cxr.data.images import load_image
from covid_cxr.errors import ImageError
from covid_cxr.io import atomic_write_bytes

log = logging.getLogger(__name__)

GRID_COLUMNS = 3


def _save(fig: Figure, path: Path) -> Path:
    """Render a figure to PNG with the Agg canvas and write it atomically."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _safe_name(label: str) -> str:
    """A file-name-safe form of a class label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("_") or "class"


def _grey_or_none(path: str) -> np.ndarray | None:
    """The decoded grey image, or None (logged) when the file cannot be decoded."""
    try:
        return to_grey(load_image(path))
    except ImageError as exc:
        log.warning("figures skip %s: %s", exc.path, exc.reason)
        return None


def _sample(rows: pd.DataFrame, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Up to `count` decodable images of the rows, in a random order."""
    return [image for _, image in _named_sample(rows, rng, count)]


def _named_sample(rows: pd.DataFrame, rng: np.random.Generator, count: int) -> list[tuple[str, np.ndarray]]:
    """Up to `count` (file name, decodable image) pairs of the rows, in a random order."""
    images: list[tuple[str, np.ndarray]] = []
    for path in rows["path"].astype(str).to_numpy()[rng.permutation(len(rows))]:
        if len(images) == count:
            break
        image = _grey_or_none(path)
        if image is not None:
            images.append((Path(path).name, image))
    return images


def class_counts_figure(frame: pd.DataFrame, out_dir: Path) -> Path:
    """Bar chart of images per class."""
    counts = frame["label"].astype(str).value_counts().sort_index()
    fig = Figure(figsize=(max(4.0, 1.2 * len(counts)), 4))
    ax = fig.add_subplot()
    bars = ax.bar(counts.index, counts.to_numpy(), color="tab:blue")
    ax.bar_label(bars)
    ax.set(title="Images per class", ylabel="images")
    fig.tight_layout()
    return _save(fig, out_dir / "class_counts.png")


def sizes_figure(frame: pd.DataFrame, out_dir: Path) -> Path:
    """Width and height histograms, one row per class."""
    labels = sorted(frame["label"].astype(str).unique())
    fig = Figure(figsize=(8, 2.5 * max(1, len(labels))))
    axes = fig.subplots(max(1, len(labels)), 2, squeeze=False)
    for row, label in zip(axes, labels, strict=False):
        rows = frame[(frame["label"].astype(str) == label) & (frame["width"] > 0)]
        for ax, column in zip(row, ("width", "height"), strict=True):
            _size_histogram(ax, rows[column].to_numpy())
            ax.set(title=f"{label}: {column}", xlabel="pixels", ylabel="images")
    fig.tight_layout()
    return _save(fig, out_dir / "sizes_per_class.png")


def _size_histogram(ax: Axes, values: np.ndarray) -> None:
    """Integer-pixel histogram with whole-image counts; one labelled bar when every image agrees."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(values) and values.min() == values.max():
        ax.bar([str(int(values[0]))], [len(values)], color="tab:gray", width=0.4)
        ax.text(0, len(values), f"all {len(values)} images", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, len(values) * 1.15)
        return
    ax.hist(values, bins=min(30, max(1, int(values.max() - values.min()) + 1)), color="tab:gray")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))


def intensity_figure(frame: pd.DataFrame, out_dir: Path, rng: np.random.Generator, images: int) -> Path:
    """Normalised grey-level histograms per class, over up to `images` random images each."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label, rows in frame.groupby(frame["label"].astype(str), sort=True):
        counts = sum(
            (np.bincount(g.ravel(), minlength=256) for g in _sample(rows, rng, images)),
            np.zeros(256, dtype=np.int64),
        )
        if counts.sum():
            ax.plot(np.arange(256), counts / counts.sum(), label=label)
    ax.set(title="Pixel intensity per class", xlabel="grey level", ylabel="fraction of pixels")
    ax.legend()
    fig.tight_layout()
    return _save(fig, out_dir / "intensity_histograms.png")


def sample_grid_figure(
    label: str, rows: pd.DataFrame, out_dir: Path, rng: np.random.Generator, count: int
) -> Path:
    """Random sample images of one class in a grid of three columns (seed 002's 2x3 for six)."""
    n_rows = max(1, math.ceil(count / GRID_COLUMNS))
    fig = Figure(figsize=(4 * GRID_COLUMNS, 3.6 * n_rows))
    axes = fig.subplots(n_rows, GRID_COLUMNS, squeeze=False).ravel()
    for ax, (name, image) in zip(axes, _named_sample(rows, rng, count), strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name if len(name) <= 40 else f"{name[:18]}…{name[-18:]}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(label, fontsize=18)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # the class title above the file names
    return _save(fig, out_dir / f"sample_grid_{_safe_name(label)}.png")


def inspect_figures(
    manifest: pd.DataFrame,
    out_dir: str | Path,
    per_class: int = 6,
    seed: int = 0,
    report: CheckReport | None = None,
    histogram_images: int = 200,
) -> list[Path]:
    """Write the inspection PNGs; files the report lists (or that fail to decode) are skipped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = usable_manifest(manifest, report) if report is not None else manifest
    rng = np.random.default_rng(seed)
    written = [
        class_counts_figure(frame, out),
        sizes_figure(frame, out),
        intensity_figure(frame, out, rng, histogram_images),
    ]
    for label, rows in frame.groupby(frame["label"].astype(str), sort=True):
        written.append(sample_grid_figure(label, rows, out, rng, per_class))
    log.info("wrote %d inspection figures to %s", len(written), out)
    return written
