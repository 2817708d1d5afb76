"""KServe v2 / Open Inference Protocol: model metadata, readiness and infer (NCHW FP32, as model.onnx)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException

from covid_cxr.data.spec import Preprocess
from covid_cxr.serving.deps import MODEL_VERSION, BodyDep, ModelDep, PredictorDep, StateDep, require_api_key
from covid_cxr.serving.inputs import numeric_array, parse_json
from covid_cxr.serving.schemas import (
    ERRORS,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2Tensor,
    V2TensorMeta,
)

router = APIRouter(
    prefix="/v2/models", tags=["KServe v2"], dependencies=[Depends(require_api_key)], responses=ERRORS
)

INPUT, OUTPUT, DATATYPE = "input", "probabilities", "FP32"
_REF = "#/components/schemas/{model}"
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": V2InferRequest.model_json_schema(ref_template=_REF)}},
    }
}


@router.get("/{name}", response_model=V2ModelMetadata)
def model_metadata(name: ModelDep, predictor: PredictorDep) -> V2ModelMetadata:
    """Inputs and outputs with datatype and shape (-1 = any batch size), plus the class names."""
    spec = predictor.preprocess
    return V2ModelMetadata(
        name=name,
        versions=[MODEL_VERSION],
        platform="onnxruntime_onnx" if predictor.backend == "onnx" else "pytorch",
        inputs=[V2TensorMeta(name=INPUT, datatype=DATATYPE, shape=[-1, spec.channels, spec.size, spec.size])],
        outputs=[V2TensorMeta(name=OUTPUT, datatype=DATATYPE, shape=[-1, len(predictor.classes)])],
        parameters={"class_names": predictor.classes, "preprocess": spec.model_dump(mode="json")},
    )


@router.get("/{name}/ready")
def model_ready(name: ModelDep) -> dict[str, Any]:
    """The model is loaded before the server accepts requests, so it is always ready."""
    return {"name": name, "ready": True}


@router.post(
    "/{name}/infer", response_model=V2InferResponse, response_model_exclude_none=True, openapi_extra=_BODY_DOC
)
async def infer(name: ModelDep, state: StateDep, body: BodyDep) -> V2InferResponse:
    """Probabilities (N, K) for a normalised (N, C, H, W) FP32 tensor named `input`."""
    request, x = await asyncio.to_thread(
        _parse, body, state.predictor.preprocess, state.settings.max_instances
    )
    probs = await state.runner.run(x)
    output = V2Tensor(name=OUTPUT, shape=list(probs.shape), datatype=DATATYPE, data=probs.ravel().tolist())
    return V2InferResponse(model_name=name, model_version=MODEL_VERSION, id=request.id, outputs=[output])


def _parse(body: bytes, spec: Preprocess, max_instances: int) -> tuple[V2InferRequest, np.ndarray]:
    """Parse and check an infer body (blocking): the request and its float32 NCHW input."""
    request: V2InferRequest = parse_json(body, V2InferRequest)
    return request, _input_tensor(request.inputs, spec, max_instances)


def _input_tensor(inputs: list[V2Tensor], spec: Preprocess, max_instances: int) -> np.ndarray:
    """Check name, datatype and shape of the one input tensor and return it as float32 NCHW."""
    if len(inputs) != 1 or inputs[0].name != INPUT:
        raise HTTPException(400, f"expected one input tensor named {INPUT!r}, got {[t.name for t in inputs]}")
    tensor = inputs[0]
    if tensor.datatype != DATATYPE:
        raise HTTPException(400, f"input datatype must be {DATATYPE}, got {tensor.datatype!r}")
    expected = [spec.channels, spec.size, spec.size]
    if len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
        raise HTTPException(400, f"shape must be [N, {', '.join(map(str, expected))}], got {tensor.shape}")
    if tensor.shape[0] > max_instances:
        raise HTTPException(413, f"batch of {tensor.shape[0]} exceeds the limit of {max_instances}")
    data = numeric_array(tensor.data, "input data")
    needed = int(np.prod(tensor.shape))
    if data.size != needed:
        raise HTTPException(400, f"input data has {data.size} values; shape {tensor.shape} needs {needed}")
    return data.reshape(tensor.shape)
