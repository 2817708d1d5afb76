"""TF-Serving REST API: model status, metadata, :predict (instances / inputs) and :explain, for the model
(`/v1/models/{name}`), its version (`/versions/1`) or a label (`/labels/stable`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from fastapi import APIRouter, Depends, HTTPException

from covid_cxr.serving.deps import (
    LABELLED,
    MODEL_VERSION,
    BodyDep,
    ModelDep,
    PredictorDep,
    ServerState,
    StateDep,
    require_api_key,
)
from covid_cxr.serving.inputs import (
    BYTES_INPUT,
    BYTES_SIGNATURE,
    FLOAT_INPUT,
    FLOAT_SIGNATURE,
    SIGNATURES,
    NHWCRows,
    b64_bytes,
    batch_tensor,
    nhwc_batch,
    parse_json,
)
from covid_cxr.serving.schemas import ERRORS, TFExplainResponse, TFPredictRequest, TFPredictResponse
from covid_cxr.serving.schemas import TFColumnarResponse as Columnar
from covid_cxr.serving.service import explain_bytes

router = APIRouter(
    prefix="/v1/models", tags=["TF-Serving REST"], dependencies=[Depends(require_api_key)], responses=ERRORS
)

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": TFPredictRequest.model_json_schema()}},
        "description": "instances: preprocessed [H, W, C] float arrays (signature serving_default) or "
        '{"b64": "<image file, base64>"} (serving_bytes); without signature_name, the instance decides',
    }
}


def model_status(name: ModelDep) -> dict[str, Any]:
    """TF-Serving's GetModelStatus: one version, AVAILABLE."""
    status = {"error_code": "OK", "error_message": ""}
    return {"model_version_status": [{"version": MODEL_VERSION, "state": "AVAILABLE", "status": status}]}


def model_metadata(name: ModelDep, predictor: PredictorDep) -> dict[str, Any]:
    """TF-Serving's GetModelMetadata: serving_default (DT_FLOAT NHWC arrays) and serving_bytes (DT_STRING
    encoded images), plus class names and preprocessing."""
    spec = predictor.preprocess
    outputs = {"probabilities": _tensor_info("probabilities", "DT_FLOAT", [-1, len(predictor.classes)])}
    signatures = {
        FLOAT_SIGNATURE: {
            "inputs": {
                FLOAT_INPUT: _tensor_info(FLOAT_INPUT, "DT_FLOAT", [-1, spec.size, spec.size, spec.channels])
            },
            "outputs": outputs,
            "method_name": "tensorflow/serving/predict",
        },
        BYTES_SIGNATURE: {
            "inputs": {BYTES_INPUT: _tensor_info(BYTES_INPUT, "DT_STRING", [-1])},
            "outputs": outputs,
            "method_name": "tensorflow/serving/predict",
        },
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": MODEL_VERSION},
        "metadata": {
            "signature_def": {"signature_def": signatures},
            "class_names": predictor.classes,
            "preprocess": spec.model_dump(mode="json"),
        },
    }


async def predict(name: ModelDep, state: StateDep, body: BodyDep) -> dict[str, Any]:
    """Probabilities for each instance: `{"predictions": [[p, ...], ...]}` (or `{"outputs": ...}`)."""
    async with state.decodes.slot():
        x, row_format = await asyncio.to_thread(_predict_input, body, state)
    rows = (await state.infer(x))[0].tolist()
    return {"predictions": rows} if row_format else {"outputs": rows}


async def explain(name: ModelDep, state: StateDep, body: BodyDep) -> dict[str, Any]:
    """Probabilities and the Grad-CAM overlay (base64 PNG) of each `{"b64": ...}` instance."""
    images = await asyncio.to_thread(_explain_input, body, state.settings.max_instances)
    results = []
    for data, where in images:
        async with state.explains.slot():
            results.append(await asyncio.to_thread(explain_bytes, state, data, where))
    return {"explanations": [r.model_dump(exclude={"model", "image_png"}) for r in results]}


def _add(path: str, endpoint: Callable[..., Any], method: str, **kwargs: Any) -> None:
    """Register `endpoint` at /{name}<suffix><path> for every way of naming the served version."""
    for suffix, dependencies in LABELLED.items():
        router.add_api_route(
            f"/{{name}}{suffix}{path}", endpoint, methods=[method], dependencies=dependencies, **kwargs
        )


_add("", model_status, "GET")
_add("/metadata", model_metadata, "GET")
_add(":predict", predict, "POST", response_model=TFPredictResponse | Columnar, openapi_extra=_BODY_DOC)
_add(":explain", explain, "POST", response_model=TFExplainResponse, openapi_extra=_BODY_DOC)


class _ArrayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A :predict body whose instances (or inputs) is one N x H x W x C number array, as seed 000 sends."""

    signature_name: str | None = None
    instances: NHWCRows | None = None
    inputs: NHWCRows | None = None


_ARRAY_REQUEST = msgspec.json.Decoder(_ArrayRequest)


def _request(body: bytes) -> tuple[TFPredictRequest, str | None]:
    """Parse the body; check the signature and that exactly one of instances/inputs is given."""
    request: TFPredictRequest = parse_json(body, TFPredictRequest)
    signature = request.signature_name or None
    if signature not in (None, *SIGNATURES):
        raise HTTPException(400, f"unknown signature_name {signature!r}; use one of {', '.join(SIGNATURES)}")
    if (request.instances is None) == (request.inputs is None):
        raise HTTPException(400, "give exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    return request, signature


def _predict_input(body: bytes, state: ServerState) -> tuple[np.ndarray, bool]:
    """Parse, decode and preprocess a :predict body (blocking): (N, C, H, W) input, row format or not.

    A valid NHWC number array (seed 000's client) takes the fast path; everything else, and every
    mistake, goes through the general one, which names the problem.
    """
    array = _array_input(body, state)
    return array if array is not None else _any_input(body, state)


def _array_input(body: bytes, state: ServerState) -> tuple[np.ndarray, bool] | None:
    """A valid NHWC number-array body as float32, with no per-value Python work; None for anything else."""
    try:
        request = _ARRAY_REQUEST.decode(body)
    except msgspec.MsgspecError:
        return None
    given = [rows for rows in (request.instances, request.inputs) if rows is not None]
    if request.signature_name not in (None, "", FLOAT_SIGNATURE) or len(given) != 1:
        return None
    x = nhwc_batch(given[0], state.predictor.preprocess, state.settings.max_instances)
    return None if x is None else (x, request.instances is not None)


def _any_input(body: bytes, state: ServerState) -> tuple[np.ndarray, bool]:
    """Any :predict body (b64 images, {"input": ...}, mixed instances), or the 4xx naming its problem."""
    request, signature = _request(body)
    row_format = request.instances is not None
    values = request.instances if row_format else _columnar(request.inputs)
    s = state.settings
    x = batch_tensor(values, state.predictor.preprocess, s.max_pixels, s.max_instances, signature, s.max_side)
    return x, row_format


def _explain_input(body: bytes, max_instances: int) -> list[tuple[bytes, str]]:
    """Parse an :explain body (blocking): the encoded image and a name for each instance."""
    request, signature = _request(body)
    if signature == FLOAT_SIGNATURE:
        raise HTTPException(400, f":explain takes encoded images (signature {BYTES_SIGNATURE!r})")
    values = request.instances if request.instances is not None else _columnar(request.inputs)
    if not values or len(values) > max_instances:
        raise HTTPException(413 if values else 400, f"give 1 to {max_instances} instances")
    return [_encoded(v, f"instance {i}") for i, v in enumerate(values)]


def _columnar(inputs: Any) -> list[Any]:
    """Columnar `inputs`: the batch itself, or `{"input": batch}` / `{"image_bytes": batch}`."""
    if isinstance(inputs, dict) and len(inputs) == 1 and set(inputs) <= {FLOAT_INPUT, BYTES_INPUT}:
        inputs = next(iter(inputs.values()))
    if not isinstance(inputs, list):
        raise HTTPException(
            400, '\'inputs\' must be a batch (a list), {"input": batch} or {"image_bytes": batch}'
        )
    return inputs


def _encoded(value: Any, where: str) -> tuple[bytes, str]:
    """The encoded image of an :explain instance, which must be {"b64": ...}."""
    if isinstance(value, dict) and len(value) == 1 and set(value) <= {FLOAT_INPUT, BYTES_INPUT}:
        value = next(iter(value.values()))
    if not (isinstance(value, dict) and set(value) == {"b64"}):
        raise HTTPException(400, f'{where}: :explain needs the image file as {{"b64": "..."}}')
    return b64_bytes(value["b64"], where), where


def _tensor_info(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    """A TensorInfo as TF-Serving writes it in JSON."""
    dims = [{"size": str(size), "name": ""} for size in shape]
    return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": f"{name}:0"}
