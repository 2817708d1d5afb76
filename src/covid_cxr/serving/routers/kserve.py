"""KServe v2 / Open Inference Protocol: model metadata, readiness and infer, at /v2/models/{name} and
/v2/models/{name}/versions/1, with JSON or binary tensors (tritonclient's default)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request

from covid_cxr.serving.deps import (
    MODEL_VERSION,
    VERSIONED,
    BodyDep,
    ModelDep,
    PredictorDep,
    ServerState,
    StateDep,
    require_api_key,
)
from covid_cxr.serving.inputs import b64_bytes, image_tensor, numeric_array, parse_json
from covid_cxr.serving.schemas import (
    ERRORS,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2Tensor,
    V2TensorMeta,
)
from covid_cxr.serving.v2binary import (
    HEADER_LENGTH,
    binary_response,
    bytes_elements,
    decompressed,
    fp32_values,
    split_body,
    take_binary,
)

router = APIRouter(
    prefix="/v2/models", tags=["KServe v2"], dependencies=[Depends(require_api_key)], responses=ERRORS
)

INPUT, IMAGE, OUTPUT = "input", "image", "probabilities"
_REF = "#/components/schemas/{model}"
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": V2InferRequest.model_json_schema(ref_template=_REF)}},
        "description": f"one input: {INPUT!r} (FP32 NCHW, preprocessed) or {IMAGE!r} (BYTES, encoded image "
        "files; base64 strings in JSON); tensors may follow the JSON as binary data "
        f"(header {HEADER_LENGTH})",
    }
}


def model_metadata(name: ModelDep, predictor: PredictorDep) -> V2ModelMetadata:
    """Inputs (either one per request) and outputs with datatype and shape (-1 = any), plus class names."""
    spec = predictor.preprocess
    return V2ModelMetadata(
        name=name,
        versions=[MODEL_VERSION],
        platform="onnxruntime_onnx" if predictor.backend == "onnx" else "pytorch",
        inputs=[
            V2TensorMeta(name=INPUT, datatype="FP32", shape=[-1, spec.channels, spec.size, spec.size]),
            V2TensorMeta(name=IMAGE, datatype="BYTES", shape=[-1]),
        ],
        outputs=[V2TensorMeta(name=OUTPUT, datatype="FP32", shape=[-1, len(predictor.classes)])],
        parameters={"class_names": predictor.classes, "preprocess": spec.model_dump(mode="json")},
    )


def model_ready(name: ModelDep) -> dict[str, Any]:
    """The model is loaded before the server accepts requests, so it is always ready."""
    return {"name": name, "ready": True}


async def infer(name: ModelDep, state: StateDep, body: BodyDep, request: Request) -> Any:
    """Probabilities (N, K) for a normalised (N, C, H, W) FP32 `input` or N encoded `image`s."""
    raw = decompressed(body, request.headers.get("content-encoding"), state.settings.max_upload_bytes)
    async with state.decodes.slot():
        parsed, x = await asyncio.to_thread(_parse, raw, request.headers.get(HEADER_LENGTH), state)
    binary = _binary_output(parsed)
    probs, _ = await state.infer(x)
    output = V2Tensor(
        name=OUTPUT,
        shape=list(probs.shape),
        datatype="FP32",
        data=None if binary else probs.ravel().tolist(),
        parameters={"binary_data_size": probs.size * 4} if binary else None,
    )
    answer = V2InferResponse(model_name=name, model_version=MODEL_VERSION, id=parsed.id, outputs=[output])
    if not binary:
        return answer
    header = answer.model_dump_json(exclude_none=True).encode()
    return binary_response(header, [np.ascontiguousarray(probs, dtype="<f4").tobytes()])


def _add(path: str, endpoint: Callable[..., Any], method: str, **kwargs: Any) -> None:
    """Register `endpoint` at /{name}<suffix><path> for the model and its version."""
    for suffix, dependencies in VERSIONED.items():
        router.add_api_route(
            f"/{{name}}{suffix}{path}", endpoint, methods=[method], dependencies=dependencies, **kwargs
        )


_add("", model_metadata, "GET", response_model=V2ModelMetadata)
_add("/ready", model_ready, "GET")
_add(
    "/infer",
    infer,
    "POST",
    response_model=V2InferResponse,
    response_model_exclude_none=True,
    openapi_extra=_BODY_DOC,
)


def _parse(body: bytes, header_length: str | None, state: ServerState) -> tuple[V2InferRequest, np.ndarray]:
    """Parse and check an infer body (blocking): the request and its float32 NCHW input."""
    header, tail = split_body(body, header_length)
    request: V2InferRequest = parse_json(header, V2InferRequest)
    _binary_output(request)  # a bad outputs list is refused before any decoding
    pieces = take_binary(tail, [_binary_size(t) for t in request.inputs])
    if len(request.inputs) != 1 or request.inputs[0].name not in (INPUT, IMAGE):
        names = [t.name for t in request.inputs]
        raise HTTPException(400, f"expected one input tensor named {INPUT!r} or {IMAGE!r}, got {names}")
    tensor, raw = request.inputs[0], pieces[0]
    if raw is None and tensor.data is None:
        raise HTTPException(400, f"input {tensor.name!r} has neither 'data' nor binary_data_size")
    fn = _float_input if tensor.name == INPUT else _image_input
    return request, fn(tensor, raw, state)


def _float_input(tensor: V2Tensor, raw: bytes | None, state: ServerState) -> np.ndarray:
    """The FP32 `input` tensor, shape-checked, as float32 NCHW."""
    spec = state.predictor.preprocess
    if tensor.datatype != "FP32":
        raise HTTPException(400, f"input {INPUT!r} datatype must be FP32, got {tensor.datatype!r}")
    expected = [spec.channels, spec.size, spec.size]
    if len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
        raise HTTPException(400, f"shape must be [N, {', '.join(map(str, expected))}], got {tensor.shape}")
    _check_batch(tensor.shape[0], state)
    needed = int(np.prod(tensor.shape))
    data = fp32_values(raw, needed, INPUT) if raw is not None else numeric_array(tensor.data, "input data")
    if data.size != needed:
        raise HTTPException(400, f"input data has {data.size} values; shape {tensor.shape} needs {needed}")
    return data.reshape(tensor.shape)


def _image_input(tensor: V2Tensor, raw: bytes | None, state: ServerState) -> np.ndarray:
    """The BYTES `image` tensor (encoded files), decoded and preprocessed as float32 NCHW."""
    if tensor.datatype != "BYTES":
        raise HTTPException(400, f"input {IMAGE!r} datatype must be BYTES, got {tensor.datatype!r}")
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise HTTPException(400, f"input {IMAGE!r} shape must be [N], got {tensor.shape}")
    count = tensor.shape[0]
    _check_batch(count, state)
    if raw is not None:
        files = bytes_elements(raw, count, IMAGE)
    else:
        assert tensor.data is not None
        if len(tensor.data) != count:
            raise HTTPException(400, f"input {IMAGE!r} has {len(tensor.data)} elements; shape needs {count}")
        files = [b64_bytes(value, f"image {i}") for i, value in enumerate(tensor.data)]
    spec, s = state.predictor.preprocess, state.settings
    return np.stack(
        [image_tensor(f, spec, s.max_pixels, f"image {i}", s.max_side) for i, f in enumerate(files)]
    )


def _check_batch(count: int, state: ServerState) -> None:
    """413 past max_instances."""
    if count > state.settings.max_instances:
        raise HTTPException(413, f"batch of {count} exceeds the limit of {state.settings.max_instances}")


def _binary_size(tensor: V2Tensor) -> int | None:
    """The tensor's `binary_data_size` parameter, checked; None when its data is JSON."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise HTTPException(
            400, f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}"
        )
    return size


def _binary_output(request: V2InferRequest) -> bool:
    """Whether the output goes back as binary data; 400 for an output this model does not have."""
    default = (request.parameters or {}).get("binary_data_output", False)
    binary = default
    for output in request.outputs or []:
        if output.name != OUTPUT:
            raise HTTPException(400, f"unknown output {output.name!r}; this model has {OUTPUT!r}")
        binary = (output.parameters or {}).get("binary_data", default)
    if not isinstance(binary, bool):
        raise HTTPException(400, f"binary_data / binary_data_output must be true or false, got {binary!r}")
    return binary
