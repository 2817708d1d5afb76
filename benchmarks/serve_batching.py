"""Throughput of the server with and without micro-batching, N concurrent clients.

Writes a random-weight bundle, starts `covid_cxr.serving.serve` in a subprocess for each setting,
and has N client threads send TF-Serving :predict requests (one preprocessed [H, W, 3] instance,
as seed 000's client does, or one {"b64": PNG}) for a fixed time. Prints requests/s and latency.

    python benchmarks/serve_batching.py --arch mobilenet_v2 --size 224 --clients 8 --seconds 15
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from covid_cxr.bundle import write_bundle
from covid_cxr.config import ModelConfig, RunConfig
from covid_cxr.data.spec import Preprocess
from covid_cxr.models.zoo import build_model

CLASSES = ["covid", "normal", "pneumonia"]


def make_bundle(arch: str, size: int, out: Path) -> Path:
    """A random-weight bundle of `arch` at `size` px."""
    spec = Preprocess(size=size, channels=3, normalize="imagenet")
    torch.manual_seed(0)
    model = build_model(arch, None, len(CLASSES), image_size=size, in_chans=3).eval()
    config = RunConfig(name="bench", preprocess=spec, model=ModelConfig(arch=arch))
    return write_bundle(out, model, config, CLASSES, spec, {}, "bench")


def start_server(bundle: Path, batching: bool, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    """serve() in a subprocess; returns it and its URL once /healthz answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "import sys; from covid_cxr.serving import serve; "
        f"serve(sys.argv[1], port={port}, log_level='warning', "
        f"batching={batching}, max_wait_ms={max_wait_ms})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(bundle)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, median latency ms, p95 latency ms) of `clients` threads posting `body` for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                response = client.post(
                    f"{url}/v1/models/bench:predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return len(latencies) / elapsed, float(np.median(ms)), float(np.percentile(ms, 95))


def bodies(size: int) -> dict[str, bytes]:
    """One-instance request bodies: a preprocessed array and a base64 PNG."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(1, size, size, 3)).astype(np.float32).round(4)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(buf, format="PNG")
    return {
        "array": json.dumps({"instances": array.tolist()}).encode(),
        "b64": json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]}).encode(),
    }


def main() -> None:
    """Parse arguments, run every setting, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(args.arch, args.size, Path(tmp) / "bundle")
        payloads = bodies(args.size)
        print(f"{args.arch} {args.size}px, {args.clients} clients, {args.seconds:.0f} s each")  # noqa: T201
        print(f"{'batching':>9} {'input':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")  # noqa: T201
        for batching in (False, True):
            proc, url = start_server(bundle, batching, args.max_wait_ms)
            try:
                for name, body in payloads.items():
                    load(url, body, args.clients, 2)  # warm-up
                    rps, p50, p95 = load(url, body, args.clients, args.seconds)
                    print(f"{batching!s:>9} {name:>6} {rps:8.1f} {p50:8.1f} {p95:8.1f}")  # noqa: T201
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
