"""Multipart uploads (PNG, JPEG, DICOM...): POST /predict and POST /explain, parsed in memory."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from covid_cxr.serving.deps import BodyDep, StateDep, require_api_key
from covid_cxr.serving.inputs import upload_bytes
from covid_cxr.serving.schemas import ERRORS, ClassResult, ExplainResult
from covid_cxr.serving.service import by_class, explain_bytes, gated_tensor, verdicts

router = APIRouter(tags=["uploads"], dependencies=[Depends(require_api_key)], responses=ERRORS)

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/predict", response_model=ClassResult, openapi_extra=_UPLOAD_DOC)
async def predict_upload(request: Request, state: StateDep, body: BodyDep) -> ClassResult:
    """Class probabilities of one uploaded image (multipart field `file`, or the raw file as the body)."""
    data, name = upload_bytes(body, request.headers.get("content-type"))
    predictor, s = state.predictor, state.settings
    async with state.decodes.slot():
        x, gate = await asyncio.to_thread(gated_tensor, predictor, data, s.max_pixels, name, s.max_side)
    probs, features = await state.infer(x[None])
    probabilities, predicted = by_class(predictor, probs[0])
    verdict = verdicts(predictor, probs, features, [gate])[0]
    return ClassResult(model=state.model_name, probabilities=probabilities, predicted=predicted, **verdict)


@router.post("/explain", response_model=ExplainResult, openapi_extra=_UPLOAD_DOC)
async def explain_upload(
    request: Request,
    state: StateDep,
    body: BodyDep,
    target: Annotated[str | None, Query(max_length=200, description="class name or index")] = None,
    method: Annotated[str | None, Query(max_length=50, description="CAM method")] = None,
) -> ExplainResult:
    """Probabilities plus the class-activation overlay and the decoded image (base64 PNGs)."""
    data, name = upload_bytes(body, request.headers.get("content-type"))
    async with state.explains.slot():
        return await asyncio.to_thread(explain_bytes, state, data, name, target, method)
