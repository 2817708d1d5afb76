"""FastAPI dependencies: the served model, the API-key check, the model-name check, the bounded body."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Header, HTTPException, Path, Request

from covid_cxr.bundle import load_bundle
from covid_cxr.export import model_name
from covid_cxr.predictor import Predictor
from covid_cxr.serving.batching import DirectRunner, make_runner
from covid_cxr.serving.limits import Slots
from covid_cxr.serving.settings import Settings

MODEL_VERSION = "1"


@dataclass
class ServerState:
    """What the lifespan handler loads once and every request reads."""

    settings: Settings
    predictor: Predictor
    model_name: str
    runner: DirectRunner
    decodes: Slots = field(init=False)
    explains: Slots = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.decodes = Slots("decoding", s.decode_slots, s.queue_limit)
        self.explains = Slots("explain", s.explain_slots, s.queue_limit)

    @classmethod
    def load(cls, settings: Settings, predictor: Predictor | None = None) -> ServerState:
        """Load the bundle (unless given) and build the (not yet started) runner; blocking."""
        if predictor is None:
            predictor = load_bundle(settings.bundle, settings.backend, settings.threads)
        predictor.frontal_check = settings.frontal_check
        runner = make_runner(
            partial(_packed, predictor), settings.batching, settings.max_batch, settings.max_wait_ms / 1000
        )
        return cls(settings, predictor, settings.model_name or model_name(predictor.bundle_info), runner)

    async def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) input -> ((N, K) probabilities, (N, D) OOD features), micro-batched when on."""
        out = await self.runner.run(x)
        k = len(self.predictor.classes)
        return out[:, :k], out[:, k:]


def _packed(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    """Probabilities and OOD features side by side in one array, so that batches split by rows (no
    features for a bundle without a detector: nothing would score them)."""
    if predictor.reliability.detector is None:
        return predictor.predict_tensor(x)
    probs, features = predictor.predict_outputs(x)
    return np.concatenate([probs, features], axis=1)


def get_state(request: Request) -> ServerState:
    """The state the lifespan handler stored on the app."""
    return request.app.state.served


StateDep = Annotated[ServerState, Depends(get_state)]


def get_predictor(state: StateDep) -> Predictor:
    """The loaded bundle's Predictor."""
    return state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


def require_api_key(
    state: StateDep,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """401 unless the settings' api_key came as `X-API-Key` or `Authorization: Bearer`."""
    expected = state.settings.api_key
    if expected is None:
        return
    bearer = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else None
    given = x_api_key if x_api_key is not None else bearer
    if given is None or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            401,
            "missing or wrong API key (send X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def served_model(state: StateDep, name: Annotated[str, Path(description="served model name")]) -> str:
    """The model name in the path, or 404 naming the one this server serves."""
    if name != state.model_name:
        raise HTTPException(404, f"model {name!r} not found; this server serves {state.model_name!r}")
    return name


ModelDep = Annotated[str, Depends(served_model)]


async def read_body(request: Request, state: StateDep) -> bytes:
    """The request body in memory: 413 as soon as it passes max_upload_bytes, 408 when it has not
    arrived within body_timeout_s (a slow client cannot hold a connection open)."""
    limit, timeout = state.settings.max_upload_bytes, state.settings.body_timeout_s
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    try:
        return await asyncio.wait_for(_collect(request, limit), timeout)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"request body not complete within {timeout:g} s") from None


async def _collect(request: Request, limit: int) -> bytes:
    """The streamed body, refused with 413 past `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


BodyDep = Annotated[bytes, Depends(read_body)]


def served_version(version: Annotated[str, Path(description="model version; this server has '1'")]) -> None:
    """404 unless the path names the one version served."""
    if version != MODEL_VERSION:
        raise HTTPException(404, f"version {version!r} not found; this model has version {MODEL_VERSION!r}")


def served_label(
    label: Annotated[str, Path(description=f"version label: {', '.join(VERSION_LABELS)}")],
) -> None:
    """404 unless the path names a label of the one version served."""
    if label not in VERSION_LABELS:
        raise HTTPException(404, f"label {label!r} not found; labels: {', '.join(VERSION_LABELS)}")


VERSION_LABELS = ("stable", "latest")
VERSIONED: dict[str, list[Any]] = {"": [], "/versions/{version}": [Depends(served_version)]}
"""Path suffixes after /{name} that address the served version, with the dependency checking each."""
LABELLED: dict[str, list[Any]] = {**VERSIONED, "/labels/{label}": [Depends(served_label)]}
