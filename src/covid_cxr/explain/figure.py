"""The explanation panel a person reads: titled original | heatmap with colour bar | overlay, as PNG.

The title names the file, the predicted class and its probability, and the explained class; the
heatmap carries a colour bar (relative importance 0-1). The panel's long side is capped (1024 px by
default) so that a 3000 px radiograph does not give a 37 MB PNG; ``max_side=None`` keeps the
original resolution.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from matplotlib.figure import Figure

from covid_cxr.data.images import load_image
from covid_cxr.errors import ImageError
from covid_cxr.explain.cam import CamModel, Explanation, Target, _expand, _unique_stem, as_cam_model, explain
from covid_cxr.explain.overlay import encode_png
from covid_cxr.io import atomic_write_bytes

if TYPE_CHECKING:
    from covid_cxr.predictor import Predictor

MAX_SIDE = 1024
MIN_WIDTH = 768  # small images are enlarged so that the title and colour bar stay legible
DPI = 100
_TITLE_IN = 0.55  # title band, inches
_BAR_IN = 0.6  # colour bar band under the images, inches


def panel_png(
    result: Explanation, name: str, colormap: str = "jet", max_side: int | None = MAX_SIDE
) -> bytes:
    """The titled three-image panel of `result` for the file called `name`, as PNG bytes."""
    height, width = result.heatmap.shape
    original = result.panel[:, :width]
    scale = 1.0 if max_side is None else min(1.0, max_side / (3 * width))
    scale = max(scale, MIN_WIDTH / (3 * width))
    side = (max(1, round(width * scale)), max(1, round(height * scale)))
    images = [_resize(original, side), _resize(result.heatmap, side), _resize(result.overlay, side)]
    fig = Figure(figsize=(3 * side[0] / DPI, side[1] / DPI + _TITLE_IN + _BAR_IN), dpi=DPI)
    total_in = side[1] / DPI + _TITLE_IN + _BAR_IN
    bottom, top = _BAR_IN / total_in, 1 - _TITLE_IN / total_in
    axes = [fig.add_axes((i / 3, bottom, 1 / 3, top - bottom)) for i in range(3)]
    for ax, image, label in zip(axes, images, ("original", "heatmap", "overlay"), strict=True):
        shown = ax.imshow(image, cmap=colormap if image.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_axis_off()
        ax.text(
            0.02,
            0.97,
            label,
            transform=ax.transAxes,
            va="top",
            color="white",
            fontsize=9,
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 2, "linewidth": 0},
        )
        if label == "heatmap":
            bar_ax = fig.add_axes((1 / 3 + 0.04, 0.5 * bottom, 1 / 3 - 0.08, 0.22 * bottom))
            bar = fig.colorbar(shown, cax=bar_ax, orientation="horizontal")
            bar.ax.tick_params(labelsize=7, pad=1)
            bar.ax.set_title("relative importance", fontsize=7, pad=2)
    fig.suptitle(_title(result, name), fontsize=9, y=1 - 0.1 * _TITLE_IN / total_in, va="top")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _title(result: Explanation, name: str) -> str:
    """'chest.png: predicted covid (0.91)' and the method, explained class and layer below."""
    predicted = max(result.probabilities, key=result.probabilities.__getitem__)
    line = f"{name}: predicted {predicted} ({result.probabilities[predicted]:.2f})"
    target = result.target_class
    explained = (
        f"{result.method} for class {target} ({result.probabilities[target]:.2f}), layer {result.layer}"
    )
    return f"{line}\n{explained}  ·  research use only"


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at (width, height) `size` (area averaging when shrinking)."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class ExplainedFile:
    """One explained file: where its panel and overlay went, the prediction and the explained class."""

    path: Path
    panel: Path
    overlay: Path
    predicted: str
    probability: float
    target: str


def explain_files(
    predictor: Predictor | CamModel,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    method: str = "gradcam",
    target: Target = None,
    layer: str | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    max_side: int | None = MAX_SIDE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[ExplainedFile], dict[str, str]]:
    """Write ``<stem>_panel.png`` (titled) and ``<stem>_overlay.png`` per image; unreadable files with why."""
    subject, out, files = as_cam_model(predictor), Path(out_dir), _expand(paths)
    done: list[ExplainedFile] = []
    failures: dict[str, str] = {}
    written: list[Path] = []
    for i, path in enumerate(files, start=1):
        try:
            image = load_image(path)
        except ImageError as exc:
            failures[str(path)] = exc.reason
            continue
        result = explain(subject, image, method, target, layer, colormap, alpha)
        stem = _unique_stem(path.stem, written)
        panel, overlay = out / f"{stem}_panel.png", out / f"{stem}_overlay.png"
        atomic_write_bytes(panel, panel_png(result, path.name, colormap, max_side))
        atomic_write_bytes(overlay, _capped_png(result.overlay, max_side))
        written += [panel, overlay]
        predicted = max(result.probabilities, key=result.probabilities.__getitem__)
        done.append(
            ExplainedFile(
                path, panel, overlay, predicted, result.probabilities[predicted], result.target_class
            )
        )
        if progress is not None:
            progress(i, len(files))
    return done, failures


def _capped_png(rgb: np.ndarray, max_side: int | None) -> bytes:
    """PNG of an RGB image whose long side is at most `max_side` (None: as it is)."""
    height, width = rgb.shape[:2]
    scale = 1.0 if max_side is None else min(1.0, max_side / max(height, width))
    return encode_png(_resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale)))))
