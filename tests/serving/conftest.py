"""A tiny random-weight bundle (convnet, 32 px, 3 channels) and clients of an app serving it."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from covid_cxr.bundle import write_bundle
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.spec import Preprocess
from covid_cxr.models.zoo import build_model
from covid_cxr.serving import Settings, create_app

CLASSES = ["COVID-19", "Normal", "Viral Pneumonia"]
SPEC = Preprocess(size=32, channels=3, normalize="imagenet")
MODEL_NAME = "covid_vgg16_no_reg_grad"


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """write_bundle of a randomly initialised seed-004 convnet at 32 px (ONNX included)."""
    head = HeadConfig(pooling="gap", hidden=[8])
    config = RunConfig(name="tiny serve", preprocess=SPEC, model=ModelConfig(arch="convnet", head=head))
    torch.manual_seed(0)
    model = build_model("convnet", head, len(CLASSES), image_size=SPEC.size, in_chans=SPEC.channels)
    out = tmp_path_factory.mktemp("run") / "bundle"
    return write_bundle(out, model.eval(), config, CLASSES, SPEC, {"accuracy": 0.5}, "fp-serving")


def make_client(bundle_dir: Path, **settings: object) -> TestClient:
    """A TestClient (not yet started) of create_app over the tiny bundle with these settings."""
    app = create_app(Settings(bundle=bundle_dir, model_name=MODEL_NAME, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="session")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    """A started client with default limits and micro-batching on."""
    with make_client(bundle_dir) as c:
        yield c


def png_bytes(shape: tuple[int, ...] = (48, 40), seed: int = 0) -> bytes:
    """A random grey (or RGB) PNG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(bundle: Path, options: str = "") -> Iterator[tuple[str, int]]:
    """`serve(bundle)` in a subprocess on a free local port, with extra keyword arguments (Python
    source, e.g. ", api_key='k'"); yields (base URL, port) and stops it afterwards."""
    port = free_port()
    code = (
        "import sys; from covid_cxr.serving import serve; serve(sys.argv[1], port=int(sys.argv[2]), "
        f"model_name={MODEL_NAME!r}, log_level='warning'{options})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(bundle), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def live_server(bundle_dir: Path) -> Iterator[str]:
    """`serve()` of the tiny bundle in a subprocess; yields its base URL."""
    with serving(bundle_dir) as (url, _):
        yield url


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll /healthz until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with code {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server at {url} did not answer within {timeout:.0f} s")
