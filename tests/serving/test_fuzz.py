"""Fuzzing: over 1000 malformed requests across every endpoint, no 5xx, and the server still answers."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import MODEL_NAME, make_client, png_bytes

KEY = "fuzz-key"
EXAMPLES = 1200
V1, V2 = f"/v1/models/{MODEL_NAME}", f"/v2/models/{MODEL_NAME}"
PATHS = [
    "/predict",
    "/explain",
    f"{V1}:predict",
    f"{V1}:explain",
    V1,
    f"{V1}/metadata",
    f"{V2}/infer",
    V2,
    f"{V2}/ready",
    "/healthz",
    "/",
    "/v2/health/ready",
    "/v1/models/x:predict",
    "/v2/models/x/infer",
]
PNG = png_bytes((40, 36), seed=31)
ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
CONTENT_TYPES = (
    st.sampled_from(
        [
            "application/json",
            "multipart/form-data",
            "multipart/form-data; boundary=zz",
            "image/png",
            "application/dicom",
            "text/plain",
            "",
        ]
    )
    | ASCII
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)
shapes = st.lists(st.integers(-2, 40), min_size=0, max_size=4)
mutated_png = st.builds(
    lambda cut, flips: _flip(PNG[:cut], flips),
    st.integers(0, len(PNG)),
    st.lists(st.integers(0, len(PNG) - 1), max_size=8),
)
b64_values = st.one_of(
    mutated_png.map(lambda b: base64.b64encode(b).decode()), st.text(max_size=30), json_values
)
arrays = st.builds(
    lambda shape, fill: np.full(_small(shape), fill).tolist(),
    shapes,
    st.floats(allow_nan=False, width=32) | st.integers(-10, 10),
)
instances = st.lists(st.one_of(arrays, b64_values.map(lambda v: {"b64": v}), json_values), max_size=4)
tf_bodies = st.fixed_dictionaries(
    {},
    optional={
        "instances": instances | json_values,
        "inputs": instances | json_values,
        "signature_name": st.sampled_from(["serving_default", "x"]) | json_values,
    },
)
v2_tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x"]),
        "shape": shapes | st.just([1, 3, 32, 32]),
        "datatype": st.sampled_from(["FP32", "INT8", "BYTES"]) | json_values,
        "data": st.lists(st.floats(width=32, allow_nan=False), max_size=40) | json_values,
    },
)
v2_bodies = st.fixed_dictionaries(
    {}, optional={"inputs": st.lists(v2_tensors, max_size=3) | json_values, "id": json_values}
)


BODIES = {
    "bytes": st.binary(max_size=500),
    "json": json_values.map(lambda v: json.dumps(v).encode()),
    "tf": tf_bodies.map(lambda v: json.dumps(v).encode()),
    "v2": v2_bodies.map(lambda v: json.dumps(v).encode()),
    "image": mutated_png,
    "large": st.builds(lambda data, n: data * n, mutated_png, st.integers(5, 60)),
}


def _small(shape: list[int]) -> list[int]:
    """Dimensions cut to 0..32, and the model's own [32, 32, 3] when that would be large."""
    dims = [abs(d) % 33 for d in shape]
    return dims if np.prod(dims) <= 4000 else [32, 32, 3]


def _flip(data: bytes, positions: list[int]) -> bytes:
    """`data` with the bytes at `positions` (those inside it) inverted."""
    out = bytearray(data)
    for i in positions:
        if i < len(out):
            out[i] ^= 0xFF
    return bytes(out)


def _multipart(part: bytes, boundary: str, filename: str) -> tuple[bytes, str]:
    """A multipart body with one part, as a browser or curl would send it."""
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
    return (
        head.encode() + part + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One malformed (or occasionally valid) request: method, path, body, headers, query."""
    kind = draw(st.sampled_from([*BODIES, "multipart"]))
    wrong_key = draw(st.integers(0, 3)) == 0
    headers = {"Authorization": draw(ASCII)} if wrong_key else {"X-API-Key": KEY}
    if kind == "multipart":
        body, headers["content-type"] = _multipart(
            draw(mutated_png | st.binary(max_size=300)),
            draw(st.sampled_from(["b", "zz", ""]) | ASCII),
            draw(st.sampled_from(["a.png", "b.dcm", ""]) | ASCII),
        )
    else:
        body = draw(BODIES[kind])
        headers["content-type"] = draw(CONTENT_TYPES)
    params = draw(
        st.fixed_dictionaries({}, optional={"target": st.text(max_size=12), "method": st.text(max_size=12)})
    )
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
    return {
        "method": method,
        "url": draw(st.sampled_from(PATHS)),
        "content": body,
        "headers": headers,
        "params": params,
    }


@pytest.fixture(scope="module")
def keyed_client(bundle_dir: Path) -> Iterator[TestClient]:
    with make_client(bundle_dir, api_key=KEY, max_upload_bytes=20_000, max_instances=3) as client:
        yield client


def test_fuzzed_requests_never_get_5xx(keyed_client: TestClient) -> None:
    answered: list[tuple[int, dict[str, Any]]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def send(request: dict[str, Any]) -> None:
        response = keyed_client.request(**request)
        answered.append((response.status_code, request))
        assert response.status_code < 500, (response.status_code, response.text, request)
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str)

    send()
    statuses = {status for status, _ in answered}
    assert len(answered) >= 1000
    assert {200, 400, 401, 404, 413, 422} <= statuses, statuses  # the fuzzing reached every kind of answer
    ok = keyed_client.post(
        f"{V1}:predict",
        json={"instances": [{"b64": base64.b64encode(PNG).decode()}]},
        headers={"X-API-Key": KEY},
    )
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


RAW_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n",
    b"\x00\xff\x00\xff" * 100,
]


def test_raw_http_garbage_leaves_the_live_server_answering(live_server: str) -> None:
    host, port = live_server.removeprefix("http://").split(":")
    for raw in RAW_REQUESTS:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            reply = _read_all(sock)
        if reply:
            status = int(reply.split(b" ", 2)[1])
            assert status < 500, (raw[:60], reply[:200])
    assert httpx.get(f"{live_server}/healthz", timeout=5).status_code == 200


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or goes quiet)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _number(value: Any) -> bool:
    """Whether a JSON leaf is a number that float32 holds (bools and non-finite values are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        with np.errstate(over="ignore"):
            return bool(np.isfinite(np.float32(float(value))))
    except OverflowError:
        return False


def _valid_batch(rows: list[Any]) -> bool:
    """Whether `rows` is a (1, 32, 32, 3) array of float32 numbers: what the server must answer with 200."""
    leaves: list[Any] = []
    stack = [rows]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            leaves.append(item)
    if not all(_number(v) for v in leaves):
        return False
    try:
        return np.asarray(rows, dtype=np.float64).shape == (1, 32, 32, 3)
    except ValueError:  # ragged
        return False


# No bools: numpy reads `true` among floats as 1.0, which the server has always taken.
leaf_values = (
    st.floats(width=32)
    | st.floats(min_value=3e38, max_value=1e300)
    | st.integers(-(10**40), 10**40)
    | st.none()
    | st.text(max_size=5)
    | st.lists(st.floats(width=32), max_size=4)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
# (row, column, channel, value): channel 0-2 sets that number, 3 replaces the pixel, -1 deletes it
array_edits = st.lists(
    st.tuples(st.integers(0, 31), st.integers(0, 31), st.integers(-1, 3), leaf_values), max_size=3
)


def test_fuzzed_float_arrays_get_200_exactly_when_valid(client: TestClient, bundle_dir: Path) -> None:
    from covid_cxr.bundle import load_bundle

    predictor = load_bundle(bundle_dir)
    base = np.random.default_rng(33).normal(size=(1, 32, 32, 3)).astype(np.float32)
    statuses: list[int] = []

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(array_edits, st.booleans())
    def send(edits: list[tuple[int, int, int, Any]], columnar: bool) -> None:
        rows = base.tolist()
        for i, j, k, value in edits:
            row = rows[0][i]
            if j >= len(row):
                continue
            if k == -1:
                del row[j]
            elif k == 3:
                row[j] = value
            elif isinstance(row[j], list) and k < len(row[j]):
                row[j][k] = value
        body = json.dumps(
            {"signature_name": "serving_default", ("inputs" if columnar else "instances"): rows}
        )
        response = client.post(
            f"{V1}:predict", content=body.encode(), headers={"content-type": "application/json"}
        )
        statuses.append(response.status_code)
        if _valid_batch(rows):
            assert response.status_code == 200, (response.text, edits)
            got = np.array(response.json()["outputs" if columnar else "predictions"])
            x = np.asarray(rows, dtype=np.float32).transpose(0, 3, 1, 2)
            np.testing.assert_allclose(got, predictor.predict_tensor(x), atol=1e-5)
        else:
            assert response.status_code == 400, (response.status_code, response.text, edits)
            assert "instance 0" in response.json()["error"]

    send()
    assert {200, 400} <= set(statuses)
