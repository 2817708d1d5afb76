"""What the routers share: probabilities by class name and Grad-CAM explanations of uploaded bytes."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import HTTPException

from covid_cxr.bundle import INTENDED_USE
from covid_cxr.data.preprocess import preprocess
from covid_cxr.explain.cam import METHODS, explain
from covid_cxr.explain.overlay import encode_png, to_rgb
from covid_cxr.predictor import Predictor
from covid_cxr.reliability.gate import GateResult
from covid_cxr.serving.deps import ServerState
from covid_cxr.serving.inputs import decode_upload
from covid_cxr.serving.schemas import ExplainResult, ModelCard

DISPLAY_MAX_SIDE = 1024  # overlay and image come back at most this large (display size, not model input)


def by_class(predictor: Predictor, row: np.ndarray) -> tuple[dict[str, float], str]:
    """One probability row -> ({class: p}, most probable class)."""
    probabilities = {c: float(p) for c, p in zip(predictor.classes, row, strict=True)}
    return probabilities, predictor.classes[int(np.argmax(row))]


def model_card(info: dict[str, Any]) -> ModelCard:
    """The bundle's description of the model (bundle.json, read through predictor.info)."""
    data = info.get("training_data")
    if isinstance(data, dict):
        data = "; ".join(f"{key}: {value}" for key, value in data.items())
    elif isinstance(data, list):
        data = "; ".join(_source_line(source) for source in data if isinstance(source, dict))
    if not data:
        fingerprint = str(info.get("data_fingerprint") or "unknown")
        data = f"not described in the bundle; training-data fingerprint {fingerprint[:16]}"
    metrics = {
        key: float(value)
        for key, value in (info.get("metrics") or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return ModelCard(
        run=(info.get("run") or {}).get("name"),
        created=info.get("created"),
        intended_use=str(info.get("intended_use") or INTENDED_USE),
        training_data=str(data),
        metrics=metrics,
        conformal_coverage=(info.get("conformal") or {}).get("coverage"),
    )


def _source_line(source: dict[str, Any]) -> str:
    """One training source in words: its folder's name, images per split, and where it lies."""
    splits = source.get("images") or {}
    counts = ", ".join(f"{split} {sum(by_class.values())}" for split, by_class in splits.items())
    path = str(source.get("path") or "unknown")
    return f"{Path(path).name} ({counts or 'image counts not recorded'}; {path})"


def check_method(method: str) -> str:
    """The CAM method name, or 422 listing the valid ones."""
    if method not in METHODS:
        raise HTTPException(422, f"unknown explanation method {method!r}; valid: {', '.join(METHODS)}")
    return method


def explain_bytes(
    state: ServerState, data: bytes, name: str, target: str | None = None, method: str | None = None
) -> ExplainResult:
    """Decode an image and explain it for `target` (None: predicted class) with `method`; blocking."""
    predictor, method = state.predictor, check_method(method or state.settings.cam_method)
    image = decode_upload(
        data, predictor.preprocess, state.settings.max_pixels, name, state.settings.max_side
    )
    result = explain(predictor, image, method=method, target=_target(predictor, target))
    probabilities = result.probabilities
    return ExplainResult(
        model=state.model_name,
        probabilities=probabilities,
        predicted=max(probabilities, key=probabilities.__getitem__),
        target_class=result.target_class,
        method=method,
        overlay_png=png_b64(result.overlay),
        image_png=png_b64(to_rgb(image)),
        **predictor.predict(image).reliability(),
    )


def gated_tensor(
    predictor: Predictor, data: bytes, max_pixels: int, name: str, max_side: int | None
) -> tuple[np.ndarray, GateResult]:
    """Encoded image bytes -> (the model's (C, H, W) float32 input, the input gate's result); blocking."""
    image = decode_upload(data, predictor.preprocess, max_pixels, name, max_side)
    return preprocess(image, predictor.preprocess).numpy(), predictor.gate(image)


def verdicts(
    predictor: Predictor, probs: np.ndarray, features: np.ndarray, gates: list[GateResult]
) -> list[dict[str, Any]]:
    """The bundle's conformal set and OOD verdict of each row, with its gate: abstain or not."""
    return predictor.reliability.assess(probs, features if features.shape[1] else None, gates)


def png_b64(rgb: np.ndarray) -> str:
    """A uint8 RGB image, shrunk to DISPLAY_MAX_SIDE, as base64 PNG text."""
    scale = DISPLAY_MAX_SIDE / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return base64.b64encode(encode_png(rgb)).decode("ascii")


def _target(predictor: Predictor, target: str | None) -> str | int | None:
    """A class name as given, a class index given as digits, or None; 422 for anything else."""
    if target is None or target in predictor.classes:
        return target
    if re.fullmatch(r"[0-9]{1,3}", target) and int(target) < len(predictor.classes):
        return int(target)
    raise HTTPException(422, f"unknown target class {target!r}; use one of {', '.join(predictor.classes)}")
