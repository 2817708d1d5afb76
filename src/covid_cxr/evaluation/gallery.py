"""The Grad-CAM gallery of an evaluation: overlays of the most confident right and wrong predictions.

``evaluate`` writes ``<evaluation>/gallery.json`` and ``<evaluation>/gallery/*.png`` (thumbnails of
the overlay for the predicted class); the report only reads them. gallery.json::

    {"layer": "features.18", "per_class": 2,
     "classes": [{"label": "COVID", "right": [CASE, ...], "wrong": [CASE, ...]}, ...]}

    CASE = {"path": ..., "name": ..., "image": "gallery/0.png" | null, "true_class": ...,
            "predicted": ..., "probability": 0.97, "problem": null | "could not be read: ..."}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covid_cxr.data.images import load_image
from covid_cxr.errors import CxrError
from covid_cxr.explain.overlay import encode_png, thumbnail
from covid_cxr.io import atomic_write_bytes, atomic_write_text
from covid_cxr.predictor import Predictor
from covid_cxr.run_dir import GALLERY_JSON

log = logging.getLogger(__name__)

GALLERY_DIR = "gallery"


def write_gallery(
    predictor: Predictor, frame: pd.DataFrame, probs: np.ndarray, out: Path, per_class: int = 2
) -> dict | None:
    """Pick the cases, explain each, write the thumbnails and gallery.json; None when per_class is 0."""
    if per_class <= 0 or frame.empty:
        return None
    from covid_cxr.explain.cam import explain

    classes = predictor.classes
    candidates = pd.DataFrame(
        {
            "path": frame["path"].astype(str).to_numpy(),
            "true_class": [classes[k] for k in frame["_y"]],
            "predicted": [classes[k] for k in probs.argmax(axis=1)],
            "probability": probs.max(axis=1),
        }
    )
    picked = pick_examples(candidates, classes, per_class)
    counter = iter(range(len(candidates)))
    gallery = {
        "layer": predictor.info.get("target_layer") or "last convolution",
        "per_class": per_class,
        "classes": [
            {
                "label": cls,
                **{
                    kind: [_explained(explain, predictor, row, out, next(counter)) for row in rows]
                    for kind, rows in chosen.items()
                },
            }
            for cls, chosen in picked.items()
        ],
    }
    atomic_write_text(out / GALLERY_JSON, json.dumps(gallery, indent=2) + "\n")
    return {"file": GALLERY_JSON, "cases": sum(len(c["right"]) + len(c["wrong"]) for c in gallery["classes"])}


def pick_examples(candidates: pd.DataFrame, classes: list[str], per_class: int) -> dict[str, dict[str, list]]:
    """class -> {"right": rows, "wrong": rows}: the `per_class` most confident of each, by true class."""
    out = {}
    for cls in classes:
        rows = candidates[candidates["true_class"] == cls]
        right = rows["predicted"] == cls
        out[cls] = {
            kind: rows[mask]
            .sort_values(["probability", "path"], ascending=[False, True])
            .head(per_class)
            .to_dict("records")
            for kind, mask in (("right", right), ("wrong", ~right))
        }
    return out


def _explained(explain, predictor: Predictor, row: dict, out: Path, index: int) -> dict:
    """One case: its overlay thumbnail written to gallery/<index>.png, and its caption fields."""
    case = {
        "path": row["path"],
        "name": Path(row["path"]).name,
        "image": None,
        "true_class": row["true_class"],
        "predicted": row["predicted"],
        "probability": float(row["probability"]),
        "problem": None,
    }
    try:
        result = explain(predictor, load_image(row["path"]), target=row["predicted"])
    except CxrError as exc:
        log.warning("gallery: %s left out: %s", row["path"], exc)
        return {**case, "problem": f"could not be explained: {exc}"}
    relative = f"{GALLERY_DIR}/{index}.png"
    atomic_write_bytes(out / relative, encode_png(thumbnail(result.overlay)))
    return {**case, "image": relative}
