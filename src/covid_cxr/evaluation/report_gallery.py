"""The report's Grad-CAM gallery: overlays of the most confident right and wrong predictions per class."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covid_cxr.bundle import load_bundle
from covid_cxr.data.images import load_image
from covid_cxr.errors import CxrError
from covid_cxr.evaluation.evaluate import PREDICTIONS_CSV
from covid_cxr.evaluation.report_format import missing
from covid_cxr.evaluation.report_images import data_uri, thumbnail
from covid_cxr.evaluation.report_run import RunFiles
from covid_cxr.explain.cam import explain
from covid_cxr.explain.overlay import encode_png
from covid_cxr.predictor import Predictor

log = logging.getLogger(__name__)


def gallery_section(files: RunFiles, per_class: int) -> dict:
    """Grad-CAM overlays of the most confident right and wrong predictions of each true class."""
    if per_class == 0:
        return missing("gallery_per_class is 0")
    if files.bundle is None:
        return missing("no bundle/ in the run folder")
    predictor = load_bundle(files.run / "bundle", backend="torch")
    candidates, described = _gallery_candidates(files, predictor)
    if candidates is None or candidates.empty:
        return missing("no test images to explain")
    picked = pick_examples(candidates, predictor.classes, per_class)
    classes = [
        {
            "label": cls,
            **{kind: [_explained(predictor, row) for row in rows] for kind, rows in chosen.items()},
        }
        for cls, chosen in picked.items()
    ]
    layer = predictor.info.get("target_layer") or "last convolution"
    quality = (files.metrics or {}).get("explanations")
    return {"data": described, "layer": layer, "classes": classes, "quality": quality}


def pick_examples(
    candidates: pd.DataFrame, classes: list[str], per_class: int
) -> dict[str, dict[str, list[dict]]]:
    """class -> {"right": rows, "wrong": rows}: the `per_class` most confident of each, by true class."""
    out = {}
    for cls in classes:
        rows = candidates[candidates["true_class"] == cls]
        right = rows["predicted"] == cls
        out[cls] = {
            kind: _most_confident(rows[mask], per_class)
            for kind, mask in (("right", right), ("wrong", ~right))
        }
    return out


def _most_confident(rows: pd.DataFrame, n: int) -> list[dict]:
    """The n rows of highest confidence (ties by path) as records."""
    return rows.sort_values(["confidence", "path"], ascending=[False, True]).head(n).to_dict("records")


def _gallery_candidates(files: RunFiles, predictor: Predictor) -> tuple[pd.DataFrame | None, str]:
    """path, true_class, predicted, confidence: from the evaluation's predictions, else the test split."""
    predictions = files.evaluation / PREDICTIONS_CSV
    if files.metrics is not None and predictions.is_file():
        frame = pd.read_csv(predictions)
        p = frame[[f"p_{c}" for c in predictor.classes]].to_numpy()
        frame["confidence"] = p[np.arange(len(frame)), frame["predicted"].map(predictor.classes.index)]
        return frame, str(files.metrics["dataset"]["source"])
    m = files.manifest
    if m is None or "split" not in m:
        return None, ""
    test = m[(m["split"] == "test") & m["label"].astype(str).isin(predictor.classes)]
    frame = _predict_rows(predictor, test["path"].astype(str).tolist(), test["label"].astype(str).tolist())
    return frame, "the run's test split"


def _predict_rows(predictor: Predictor, paths: list[str], labels: list[str], batch: int = 32) -> pd.DataFrame:
    """Predictions for the files that decode (the others are logged and left out)."""
    rows = []
    for start in range(0, len(paths), batch):
        decoded = []
        for path, label in zip(paths[start : start + batch], labels[start : start + batch], strict=True):
            try:
                decoded.append((path, label, load_image(path)))
            except CxrError as exc:
                log.warning("gallery: skipping %s: %s", path, exc)
        if decoded:
            probs = predictor.predict_proba([image for _, _, image in decoded])
            rows += [
                {
                    "path": path,
                    "true_class": label,
                    "predicted": predictor.classes[int(row.argmax())],
                    "confidence": float(row.max()),
                }
                for (path, label, _), row in zip(decoded, probs, strict=True)
            ]
    return pd.DataFrame(rows, columns=["path", "true_class", "predicted", "confidence"])


def _explained(predictor: Predictor, row: dict) -> dict:
    """One gallery item: the Grad-CAM overlay for the predicted class as a data URI, and its caption."""
    try:
        image = load_image(row["path"])
    except CxrError as exc:
        return {"uri": None, "name": Path(row["path"]).name, "caption": f"could not be read: {exc}"}
    result = explain(predictor, image, target=row["predicted"])
    probability = result.probabilities[row["predicted"]]
    return {
        "uri": data_uri(encode_png(thumbnail(result.overlay))),
        "name": Path(row["path"]).name,
        "caption": f"true {row['true_class']} · predicted {row['predicted']} · p = {probability:.2f}",
    }
