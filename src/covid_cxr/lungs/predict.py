"""Masks for files: ``DIR/<stem>.png`` (0/255 at the image's own size), overlays and per-image stats."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from covid_cxr.data.images import load_image
from covid_cxr.errors import ImageError
from covid_cxr.io import atomic_write_bytes
from covid_cxr.lungs.quality import lung_stats, overlay
from covid_cxr.lungs.segmenter import LungSegmenter, load_segmenter


def predict_files(
    files: Iterable[Path], out: Path, with_overlay: bool = False, segmenter: LungSegmenter | None = None
) -> list[dict]:
    """Segment each file; write its mask (and ``<stem>.overlay.png``); return path, mask and stats."""
    segmenter = segmenter or load_segmenter()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in files:
        image = load_image(path)
        mask = segmenter(image)
        target = out / f"{Path(path).stem}.png"
        write_png(target, mask * 255)
        item = {"path": str(path), "mask": str(target), **lung_stats(mask).as_dict()}
        if with_overlay:
            item["overlay"] = str(out / f"{Path(path).stem}.overlay.png")
            write_png(Path(item["overlay"]), overlay(image, mask))
        results.append(item)
    return results


def write_png(path: Path, array) -> None:
    """A uint8 grey or RGB array as a PNG, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def audit_files(paths: Iterable[str], segmenter: LungSegmenter | None = None) -> list[dict]:
    """Per image: lung area fraction, component count and quality flag (no files written).

    An undecodable image gets the quality ``unreadable: <reason>``; ``data check`` names it already.
    """
    segmenter = segmenter or load_segmenter()
    rows = []
    for path in paths:
        try:
            stats = lung_stats(segmenter(load_image(path))).as_dict()
        except ImageError as exc:
            stats = {"area_fraction": None, "components": None, "quality": f"unreadable: {exc.reason}"}
        rows.append({"path": str(path), **stats})
    return rows
