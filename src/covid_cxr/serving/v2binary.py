"""KServe v2 binary tensor extension: a JSON header (`Inference-Header-Content-Length` bytes) followed by
raw tensor bytes, in request and response, as NVIDIA's tritonclient sends and reads by default."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from fastapi import HTTPException
from fastapi.responses import Response

HEADER_LENGTH = "Inference-Header-Content-Length"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body undone from `Content-Encoding` gzip/deflate, refused (413) past `limit` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise HTTPException(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPException(400, f"corrupt {encoding} body ({exc})") from None
    if len(out) > limit:
        raise HTTPException(413, f"decompressed body exceeds the limit of {limit} bytes")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of an infer body; the whole body is JSON without the header."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise HTTPException(
            400, f"{HEADER_LENGTH} must be a byte count of at most the body's {len(body)} bytes"
        )
    size = int(header_length)
    return body[:size], body[size:]


def take_binary(tail: bytes, sizes: list[int | None]) -> list[bytes | None]:
    """Cut the binary tail into the pieces the inputs' `binary_data_size` declare (None: JSON data)."""
    declared = sum(s for s in sizes if s is not None)
    if declared != len(tail):
        raise HTTPException(
            400, f"inputs declare {declared} bytes of binary data; the body carries {len(tail)}"
        )
    pieces: list[bytes | None] = []
    offset = 0
    for size in sizes:
        pieces.append(None if size is None else tail[offset : offset + size])
        offset += size or 0
    return pieces


def fp32_values(raw: bytes, count: int, where: str) -> np.ndarray:
    """Little-endian FP32 bytes -> `count` finite float32 values; 400 otherwise."""
    if len(raw) != 4 * count:
        raise HTTPException(400, f"{where}: {len(raw)} bytes of FP32 data; the shape needs {4 * count}")
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(values).all():
        raise HTTPException(400, f"{where}: values must be finite float32 numbers")
    return values


def bytes_elements(raw: bytes, count: int, where: str) -> list[bytes]:
    """BYTES tensor data (each element: 4-byte little-endian length, then the bytes) -> `count` items."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise HTTPException(400, f"{where}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + size > len(raw):
            raise HTTPException(400, f"{where}: BYTES element of {size} bytes runs past the data")
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if len(items) != count:
        raise HTTPException(400, f"{where}: {len(items)} BYTES elements; the shape needs {count}")
    return items


def binary_response(header: bytes, tensors: list[bytes]) -> Response:
    """The JSON header followed by the raw output tensors, with its length in the extension header."""
    return Response(
        header + b"".join(tensors),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
