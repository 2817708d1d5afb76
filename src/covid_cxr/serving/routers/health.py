"""Health and server metadata, open without an API key (load balancers and probes call them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from covid_cxr import __version__
from covid_cxr.bundle import INTENDED_USE
from covid_cxr.serving.deps import StateDep
from covid_cxr.serving.schemas import Health
from covid_cxr.serving.service import model_card

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(state: StateDep) -> Health:
    """The served model, its classes and backend, and whether requests need an API key."""
    return Health(
        model=state.model_name,
        classes=state.predictor.classes,
        backend=state.predictor.backend,
        auth_required=state.settings.api_key is not None,
        intended_use=INTENDED_USE,
        model_card=model_card(state.predictor.info),
    )


@router.get("/v2/health/live")
def live() -> dict[str, bool]:
    """KServe v2 liveness."""
    return {"live": True}


@router.get("/v2/health/ready")
def ready(state: StateDep) -> dict[str, bool]:
    """KServe v2 readiness: the bundle is loaded before requests are accepted."""
    return {"ready": state.predictor is not None}


@router.get("/v2")
def server_metadata() -> dict[str, Any]:
    """KServe v2 server metadata."""
    return {"name": "covid-cxr", "version": __version__, "extensions": ["binary_tensor_data"]}
