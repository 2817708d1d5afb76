"""Request payloads (JSON arrays, base64 images, uploads) -> model input, or a 4xx naming the problem."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from fastapi import HTTPException
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import Field, File, FormParser, parse_options_header

from covid_cxr.data.images import decode_bytes
from covid_cxr.data.preprocess import preprocess
from covid_cxr.data.spec import Preprocess

UPLOAD_NAME = "upload"

NHWCRows = tuple[tuple[tuple[tuple[float, ...], ...], ...], ...]
"""An N x H x W x C batch as decoded JSON. Tuples, not lists: the cyclic GC stops tracking a tuple of
floats at its first pass, whereas a (224, 224, 3) image decoded to lists leaves 50,000 tracked lists
that trigger full collections of every object the server holds (~100 ms a request)."""


def parse_json(body: bytes, model: type[BaseModel]) -> Any:
    """Validate a JSON body: 400 `{"error": ...}` when it is not JSON or its fields are wrong (as
    TF Serving and KServe answer)."""
    if not body:
        raise HTTPException(400, "empty request body; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise HTTPException(400, f"malformed JSON: {errors[0]['msg']}") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])
        raise HTTPException(400, f"invalid request: {problems}") from None


def image_tensor(
    data: bytes, spec: Preprocess, max_pixels: int, name: str = UPLOAD_NAME, max_side: int | None = None
) -> np.ndarray:
    """Encoded image bytes -> the model's (C, H, W) float32 input; ImageError when undecodable."""
    return preprocess(decode_upload(data, spec, max_pixels, name, max_side), spec).numpy()


def decode_upload(
    data: bytes, spec: Preprocess, max_pixels: int, name: str = UPLOAD_NAME, max_side: int | None = None
) -> np.ndarray:
    """Encoded image bytes -> the decoded image; ImageError when undecodable.

    `max_side` (at least the model's input size) lets the decoder reduce a large image on the way."""
    return decode_bytes(data, name, max_pixels, None if max_side is None else max(max_side, spec.size))


def b64_bytes(value: Any, where: str) -> bytes:
    """Standard or URL-safe base64 text -> bytes; 400 naming `where` otherwise."""
    if not isinstance(value, str):
        raise HTTPException(400, f"{where}: 'b64' must be a base64 string, got {type(value).__name__}")
    try:
        text = value.strip().replace("-", "+").replace("_", "/")
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, f"{where}: invalid base64 ({exc})") from None


def numeric_array(value: Any, where: str) -> np.ndarray:
    """A (nested) list of finite numbers -> float32 array; 400 naming `where` otherwise."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        arr = np.asarray([], dtype=object)
    if arr.dtype.kind not in "iuf":
        raise HTTPException(400, f"{where}: expected a rectangular array of numbers")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise HTTPException(400, f"{where}: values must be finite float32 numbers")
    return out


def array_instance(value: Any, spec: Preprocess, where: str) -> np.ndarray:
    """A preprocessed H x W x C (or H x W for one channel) number array -> (C, H, W) float32."""
    size, channels = spec.size, spec.channels
    expected = f"[{size}, {size}, {channels}]" + (f" or [{size}, {size}]" if channels == 1 else "")
    arr = numeric_array(value, where)
    if arr.ndim == 2 and channels == 1:
        arr = arr[:, :, None]
    if arr.shape != (size, size, channels):
        raise HTTPException(400, f"{where}: expected shape {expected} (NHWC), got {list(arr.shape)}")
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


FLOAT_SIGNATURE, BYTES_SIGNATURE = "serving_default", "serving_bytes"
FLOAT_INPUT, BYTES_INPUT = "input", "image_bytes"
SIGNATURES = (FLOAT_SIGNATURE, BYTES_SIGNATURE)


def instance_tensor(
    value: Any,
    spec: Preprocess,
    max_pixels: int,
    where: str,
    signature: str | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """One TF-Serving instance -> (C, H, W) float32.

    serving_default takes H x W x C arrays (or {"input": array}); serving_bytes takes encoded images,
    {"b64": ...} or {"image_bytes": {"b64": ...}}; with no signature each instance's form decides.
    """
    if isinstance(value, dict) and set(value) == {FLOAT_INPUT}:  # named input, as TF Serving allows
        value = value[FLOAT_INPUT]
    if isinstance(value, dict) and set(value) == {BYTES_INPUT}:
        value = value[BYTES_INPUT]
        if not (isinstance(value, dict) and set(value) == {"b64"}):
            raise HTTPException(400, f'{where}: {BYTES_INPUT!r} must be {{"b64": "<image file, base64>"}}')
    if isinstance(value, dict) and set(value) == {"b64"}:
        if signature == FLOAT_SIGNATURE:
            raise HTTPException(
                400, f"{where}: {FLOAT_SIGNATURE!r} takes DT_FLOAT arrays; send images to {BYTES_SIGNATURE!r}"
            )
        return image_tensor(b64_bytes(value["b64"], where), spec, max_pixels, where, max_side)
    if signature == BYTES_SIGNATURE:
        raise HTTPException(400, f'{where}: {BYTES_SIGNATURE!r} takes DT_STRING images as {{"b64": "..."}}')
    if isinstance(value, dict):
        raise HTTPException(400, f'{where}: an object instance must be {{"b64": ...}} or {{"input": ...}}')
    return array_instance(value, spec, where)


def batch_tensor(
    values: list[Any],
    spec: Preprocess,
    max_pixels: int,
    max_instances: int,
    signature: str | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """A list of instances -> (N, C, H, W) float32, refusing an empty or over-long list."""
    if not values:
        raise HTTPException(400, "no instances given")
    if len(values) > max_instances:
        raise HTTPException(413, f"{len(values)} instances exceed the limit of {max_instances} per request")
    return np.stack(
        [
            instance_tensor(v, spec, max_pixels, f"instance {i}", signature, max_side)
            for i, v in enumerate(values)
        ]
    )


def nhwc_batch(rows: NHWCRows, spec: Preprocess, max_instances: int) -> np.ndarray | None:
    """Decoded N x H x W x C rows -> (N, C, H, W) float32; None unless 1..max_instances finite images of
    the spec's shape (batch_tensor then gives the error)."""
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(rows, dtype=np.float32)
    except ValueError:  # ragged
        return None
    shape_ok = arr.shape[1:] == (spec.size, spec.size, spec.channels) and 0 < len(arr) <= max_instances
    if not (shape_ok and np.isfinite(arr).all()):
        return None
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def upload_bytes(body: bytes, content_type: str | None) -> tuple[bytes, str]:
    """The uploaded file (multipart part, or the raw body) and its file name, parsed in memory."""
    if not body:
        raise HTTPException(400, "empty request body; send an image file (multipart field 'file')")
    mime, options = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        return body, UPLOAD_NAME
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary parameter")
    parts: list[File | Field] = []
    cfg = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "MAX_HEADER_COUNT": 16}
    try:
        parser = FormParser("multipart/form-data", parts.append, parts.append, boundary=boundary, config=cfg)
        parser.write(body)
        parser.finalize()
    except (FormParserError, MultipartParseError, ValueError) as exc:
        raise HTTPException(400, f"malformed multipart body ({exc})") from None
    files = [p for p in parts if isinstance(p, File)] or [p for p in parts if p.field_name == b"file"]
    if len(files) != 1:
        raise HTTPException(400, f"expected one file in the multipart body (field 'file'), got {len(files)}")
    return _part_data(files[0])


def _part_data(part: File | Field) -> tuple[bytes, str]:
    """Bytes and name of an in-memory multipart part."""
    if isinstance(part, Field):
        return part.value or b"", UPLOAD_NAME
    name = (part.file_name or b"").decode("utf-8", "replace").rsplit("/", 1)[-1] or UPLOAD_NAME
    part.file_object.seek(0)
    return part.file_object.read(), name
