"""Unsafe settings refused, slow clients cut off, headers on every response, bounded decoding, and no
decoder text in the log."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image
from pydantic import ValidationError
from pydicom import config as pydicom_config

from covid_cxr.data.dicom import decode_dicom_bytes
from covid_cxr.data.images import decode_bytes
from covid_cxr.errors import ConfigError, ImageError
from covid_cxr.serving import Settings, default_allowed_hosts, serve
from covid_cxr.serving.limits import Slots
from tests.data.test_dicom import make_dicom
from tests.serving.conftest import MODEL_NAME, _wait_until_up, free_port, make_client, png_bytes, serving

SECRET = "PID-987654321-SECRET"


# --- settings refused -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_api_key_is_refused(bundle_dir: Path, key: str) -> None:
    with pytest.raises(ValidationError, match="API key is empty"):
        Settings(bundle=bundle_dir, api_key=key)
    with pytest.raises(ConfigError, match="API key is empty"):
        serve(bundle_dir, api_key=key)


def test_cli_refuses_an_empty_key_from_flag_or_environment(bundle_dir: Path) -> None:
    cli = str(Path(sys.executable).with_name("covid-cxr"))
    env = {**os.environ, "COVID_CXR_API_KEY": ""}
    for command, environ in (
        ([cli, "serve", str(bundle_dir), "--api-key", ""], os.environ),
        ([cli, "serve", str(bundle_dir)], env),
    ):
        done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "API key is empty" in done.stdout + done.stderr


def test_half_a_tls_pair_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both --ssl-keyfile and --ssl-certfile"):
        serve(bundle_dir, ssl_keyfile=tmp_path / "key.pem")
    with pytest.raises(ConfigError, match="not found"):
        serve(bundle_dir, ssl_keyfile=tmp_path / "key.pem", ssl_certfile=tmp_path / "cert.pem")


def test_allowed_hosts_default_to_loopback_names_on_loopback() -> None:
    assert "localhost" in default_allowed_hosts("127.0.0.1") and "*" not in default_allowed_hosts("::1")
    assert default_allowed_hosts("0.0.0.0") == ("*",)
    assert Settings.from_env(
        {"COVID_CXR_SERVE_BUNDLE": "b", "COVID_CXR_SERVE_ALLOWED_HOSTS": "a,b"}
    ).allowed_hosts == ("a", "b")


def test_other_host_names_are_refused(bundle_dir: Path) -> None:
    with make_client(bundle_dir, allowed_hosts=("127.0.0.1", "localhost")) as client:
        rebound = client.get("/healthz", headers={"host": "attacker.example"})
        assert rebound.status_code == 400 and rebound.headers["cache-control"] == "no-store"
        assert client.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200


# --- headers, docs --------------------------------------------------------------------------------


def test_security_headers_and_no_store_on_every_response(bundle_dir: Path) -> None:
    with make_client(bundle_dir, api_key="k") as client:
        answers = [
            client.get("/"),
            client.get("/static/app.js"),
            client.get("/healthz"),
            client.get("/openapi.json"),
            client.get("/nowhere"),
            client.get(f"/v1/models/{MODEL_NAME}"),  # 401
            client.post("/explain", content=png_bytes(), headers={"X-API-Key": "k"}),  # image data
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 401, 200]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.url
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"


def test_swagger_ui_comes_from_local_assets(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text and "https://" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert "SwaggerUIBundle" in client.get("/static/docs.js").text
    assert client.get("/redoc").status_code == 404


# --- bounded decoding -----------------------------------------------------------------------------


def test_pixel_limit_applies_to_dicom_and_to_frames() -> None:
    single = make_dicom(np.zeros((40, 30), dtype=np.uint16))
    with pytest.raises(ImageError, match="30x40 exceeds the pixel limit of 1000"):
        decode_bytes(single, "a.dcm", max_pixels=1000)
    assert decode_bytes(single, "a.dcm", max_pixels=1200).shape == (40, 30)
    frames = np.stack([np.full((40, 30), 50 * (i + 1), dtype=np.uint8) for i in range(4)])
    multi = make_dicom(frames)
    with pytest.raises(ImageError, match="pixel limit of 1000"):
        decode_dicom_bytes(multi, "m.dcm", max_pixels=1000)  # one frame is over the limit
    first = decode_dicom_bytes(
        multi, "m.dcm", max_pixels=1200
    )  # four frames are 4800 px: only one is decoded
    np.testing.assert_array_equal(first, frames[0])


def test_server_pixel_limit_covers_dicom(bundle_dir: Path) -> None:
    dicom = make_dicom(np.zeros((40, 30), dtype=np.uint16))
    with make_client(bundle_dir, max_pixels=1000) as client:
        response = client.post("/predict", files={"file": ("a.dcm", dicom, "application/dicom")})
    assert response.status_code == 400 and "pixel limit of 1000" in response.json()["error"]


def _jpeg(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (png_bytes((900, 700, 3), seed=1), "big.png"),
        (_jpeg((1000, 800)), "big.jpg"),
        (make_dicom(np.random.default_rng(2).integers(0, 4096, (900, 700), dtype=np.uint16)), "big.dcm"),
    ],
)
def test_decoders_reduce_large_images_to_about_max_side(data: bytes, name: str) -> None:
    full = decode_bytes(data, name)
    reduced = decode_bytes(data, name, max_side=200)
    assert 200 <= max(reduced.shape[:2]) < 400 and max(full.shape[:2]) >= 700
    ratio = full.shape[0] / full.shape[1]
    assert abs(reduced.shape[0] / reduced.shape[1] - ratio) < 0.05
    assert abs(float(reduced.mean()) - float(full.mean())) < 8  # the same picture, smaller


def test_slots_queue_a_few_and_refuse_the_rest_with_retry_after() -> None:
    async def scenario() -> tuple[list[str], HTTPException]:
        slots, order = Slots("decoding", running=1, waiting=1), []
        release = asyncio.Event()

        async def hold(tag: str) -> None:
            async with slots.slot():
                order.append(tag)
                await release.wait()

        first = asyncio.create_task(hold("first"))
        await asyncio.sleep(0)
        queued = asyncio.create_task(hold("queued"))
        await asyncio.sleep(0)
        with pytest.raises(HTTPException) as refused:
            async with slots.slot():
                pass
        release.set()
        await asyncio.gather(first, queued)
        return order, refused.value

    order, refused = asyncio.run(scenario())
    assert order == ["first", "queued"]
    assert refused.status_code == 503 and refused.headers == {"Retry-After": "1"}


# --- logs -----------------------------------------------------------------------------------------


def test_decoder_warnings_never_reach_the_log(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
        try:
            bad_photometric = make_dicom(np.zeros((30, 30), dtype=np.uint8), photometric=SECRET)
            bad_tag = make_dicom(np.zeros((30, 30), dtype=np.uint8), PatientID=SECRET, RescaleType=SECRET)
        finally:
            pydicom_config.settings.writing_validation_mode = None
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with make_client(bundle_dir) as client:
            for data in (bad_photometric, bad_tag):
                response = client.post("/predict", files={"file": ("a.dcm", data, "application/dicom")})
                assert response.status_code in (200, 400) and SECRET not in response.text
    assert any(r.name == "pydicom" for r in caplog.records)  # pydicom did complain ...
    logged = caplog.text + capfd.readouterr().err + " ".join(str(w.message) for w in caught)
    assert SECRET not in logged  # ... without its text


# --- a live server with short timeouts ------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server(bundle_dir: Path) -> Iterator[tuple[str, int]]:
    """serve() with 1 s header and body timeouts in a subprocess; yields (url, port)."""
    with serving(bundle_dir, ", header_timeout_s=1.0, body_timeout_s=1.0") as server:
        yield server


def _trickle(port: int, head: bytes, data: bytes, pause: float = 0.25) -> tuple[int, bytes]:
    """Send `head` at once, then `data` one byte per `pause` s until the server answers or hangs up:
    how many bytes of `data` went out, and what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(pause)
        for sent, byte in enumerate(data):
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(4096)
                return sent, answer  # b"" (closed) or a response
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return sent, b""
        return len(data), b"still open"


def test_slow_header_client_is_cut_off(strict_server: tuple[str, int]) -> None:
    headers = b"Host: 127.0.0.1\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 4) for i in range(40))
    sent, answer = _trickle(strict_server[1], b"GET /healthz HTTP/1.1\r\n", headers + b"\r\n")
    assert answer == b"" and sent < len(headers) // 2  # closed after ~1 s, long before the headers ended


def test_slow_body_client_gets_408(strict_server: tuple[str, int]) -> None:
    head = (
        f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    ).encode()
    sent, answer = _trickle(strict_server[1], head, b'{"instances": [' + b" " * 185)
    assert answer.startswith(b"HTTP/1.1 408") and sent < 100


# --- process handling -----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Live child process ids of `pid` (from /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_die_with_their_parent(bundle_dir: Path) -> None:
    port = free_port()
    code = (
        "import sys; from covid_cxr.serving import serve; "
        f"serve(sys.argv[1], port={port}, workers=2, model_name={MODEL_NAME!r}, log_level='warning')"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(bundle_dir)])
    try:
        _wait_until_up(f"http://127.0.0.1:{port}", parent)
        workers = _children(parent.pid)
        assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # the port is free again: a restart would work
    finally:
        if parent.poll() is None:
            parent.kill()


def test_several_workers_check_the_bundle_in_a_child_and_fail_fast(tmp_path: Path) -> None:
    from covid_cxr.errors import BundleError

    with pytest.raises(BundleError, match="bundle folder not found"):
        serve(tmp_path / "missing", workers=2)
