"""Figures and overlays as embedded base64 PNG data URIs, so the report opens offline as one file."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from covid_cxr.evaluation.plots import FIGURES

log = logging.getLogger(__name__)

FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "confusion_matrix_normalized": "Confusion matrix (row-normalised)",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "reliability": "Reliability diagram",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def evaluation_figures(folder: Path) -> list[dict]:
    """Every PNG of the evaluation folder as {title, uri}: the standard figures first, then the rest."""
    known = [folder / name for name in FIGURES.values()]
    extra = sorted(p for p in folder.glob("*.png") if p not in known)
    titles = {name: FIGURE_TITLES.get(key, key) for key, name in FIGURES.items()}
    out = []
    for path in [p for p in known if p.is_file()] + extra:
        uri = png_uri(path)
        if uri is not None:
            out.append({"title": titles.get(path.name, path.stem.replace("_", " ")), "uri": uri})
    return out


def png_uri(path: Path) -> str | None:
    """A PNG file as a data URI; None when absent or not a PNG."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        log.warning("report: %s is not a PNG; left out", path)
        return None
    return data_uri(data)


def data_uri(png: bytes) -> str:
    """PNG bytes as a base64 data URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
