"""Server load: N concurrent clients for T seconds against `covid-cxr serve` on 127.0.0.1.

Writes a random-weight bundle, starts the server in a subprocess (``covid-cxr serve``; with
``--batching`` also ``serve(..., batching=True)``, the optional micro-batcher) and has N client threads,
each with its own keep-alive connection, send requests back to back for T seconds:

- ``predict``: TF-Serving ``POST /v1/models/bench:predict`` with one ``{"b64": <PNG>}`` instance;
- ``upload``: multipart ``POST /predict`` with the PNG file;
- ``array``: ``:predict`` with one random `--size` x `--size` x 3 float array as JSON, 4 decimals
  (not in the defaults);
- ``floats``: seed 000's client body, ``{"signature_name": "serving_default", "instances": x.tolist()}``
  with `x` the PNG preprocessed to a (1, `--size`, `--size`, 3) float32 array, every float at full
  precision (~3 MB of JSON at 224 px; not in the defaults);
- ``explain``: TF-Serving ``POST /v1/models/bench:explain`` (Grad-CAM), same body as ``predict``.

The PNG is a synthetic `--source` x `--source` chest phantom, so every request decodes and resizes a
full-size radiograph. The clients run on the same machine and share its cores with the server;
"client CPU" is the share of one core the load generator itself used.

    python benchmarks/server_load.py              # ~1.5 min on 2 cores (~3 min with --batching)
    python benchmarks/server_load.py --clients 1,8,32 --seconds 20 --batching --endpoints predict,array
    python benchmarks/server_load.py --endpoints floats   # seed 000's float-array body

``--batching`` replaces the former benchmarks/serve_batching.py: the same load against the server with
the micro-batcher on (max 16 rows, 5 ms wait).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chest_png, load_average, percentile_ms, print_header, print_table, random_bundle, verdict  # noqa: E402

from covid_cxr.data.images import decode_bytes  # noqa: E402
from covid_cxr.data.preprocess import preprocess  # noqa: E402
from covid_cxr.data.spec import Preprocess  # noqa: E402

TARGET_RPS, TARGET_P99_MS, TARGET_CLIENTS = 50.0, 200.0, 8


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(bundle: Path, port: int, batching: bool) -> list[str]:
    """`covid-cxr serve` (the CLI), or serve(..., batching=True) which the CLI does not expose."""
    if not batching:
        cli = Path(sys.executable).with_name("covid-cxr")
        return [str(cli), "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
    code = (
        "import sys; from covid_cxr.serving import serve; "
        f"serve(sys.argv[1], port={port}, log_level='warning', batching=True)"
    )
    return [sys.executable, "-c", code, str(bundle)]


def start_server(bundle: Path, batching: bool) -> tuple[subprocess.Popen, str]:
    """Start the server; return it and its URL once /healthz answers."""
    port = free_port()
    proc = subprocess.Popen(
        server_command(bundle, port, batching), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /healthz within 120 s")


def seed_000_body(png: bytes, size: int) -> bytes:
    """Seed 000's :predict body: `png` preprocessed as the bundle does, (1, H, W, 3) float32, `.tolist()`."""
    spec = Preprocess(size=size, channels=3, normalize="imagenet")
    image = preprocess(decode_bytes(png, "chest.png"), spec).numpy().transpose(1, 2, 0)[None]
    return json.dumps({"signature_name": "serving_default", "instances": image.tolist()}).encode()


def requests_for(png: bytes, size: int) -> dict[str, dict]:
    """httpx.Client.post keyword arguments of each endpoint."""
    body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
    array = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32).round(4)
    json_headers = {"content-type": "application/json"}
    return {
        "predict": {"url": "/v1/models/bench:predict", "content": body, "headers": json_headers},
        "array": {
            "url": "/v1/models/bench:predict",
            "headers": json_headers,
            "content": json.dumps({"instances": array.tolist()}).encode(),
        },
        "floats": {
            "url": "/v1/models/bench:predict",
            "headers": json_headers,
            "content": seed_000_body(png, size),
        },
        "upload": {"url": "/predict", "files": {"file": ("chest.png", png, "image/png")}},
        "explain": {"url": "/v1/models/bench:explain", "content": body, "headers": json_headers},
    }


def load(url: str, request: dict, clients: int, seconds: float) -> dict[str, float]:
    """requests/s, p50/p99 latency (ms), errors and client CPU of `clients` threads for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    ok = client.post(**request).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t0) if ok else None
                    errors[0] += not ok

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile_ms(latencies, 50) if latencies else float("nan"),
        "p99": percentile_ms(latencies, 99) if latencies else float("nan"),
        "errors": errors[0],
        "client_cpu": cpu / elapsed,
    }


def measure(bundle: Path, batching: bool, png: bytes, args: argparse.Namespace) -> list[list]:
    """Rows for one server setting: every endpoint at every client count."""
    proc, url = start_server(bundle, batching)
    rows = []
    try:
        for endpoint in args.endpoints.split(","):
            request = requests_for(png, args.size)[endpoint]
            seconds = args.explain_seconds if endpoint == "explain" else args.seconds
            load(url, request, 2, 2)  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                r = load(url, request, clients, seconds)
                rows.append(
                    [
                        "micro-batching" if batching else "covid-cxr serve",
                        endpoint,
                        clients,
                        r["rps"],
                        r["p50"],
                        r["p99"],
                        r["errors"],
                        f"{r['client_cpu']:.0%}",
                        load_average(),
                    ]
                )
                print(f"  {rows[-1][:3]} done", file=sys.stderr, flush=True)  # noqa: T201
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def main() -> None:
    """Parse arguments, run every setting, print the table and the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--source", type=int, default=1024, help="side of the PNG each request sends")
    parser.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--explain-seconds", type=float, default=10)
    parser.add_argument("--endpoints", default="predict,upload,explain")
    parser.add_argument("--batching", action="store_true", help="also run with the micro-batcher on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = random_bundle(args.arch, args.size, work / "bundle")
        png = chest_png(work / "chest.png", args.source).read_bytes()
        print_header(
            "Server load",
            {
                "server": f"covid-cxr serve, 1 worker, {args.arch} at {args.size} px, default backend (onnx)",
                "request": f"one {args.source}x{args.source} grey PNG ({len(png) / 1e6:.2f} MB); floats: "
                f"that PNG preprocessed, {len(seed_000_body(png, args.size)) / 1e6:.2f} MB of JSON",
                "duration": f"{args.seconds:.0f} s per setting ({args.explain_seconds:.0f} s for explain), "
                "after 2 s warm-up",
                "client": f"httpx, one thread and connection per client, pid {os.getpid()}",
            },
        )
        rows = []
        for batching in (False, True) if args.batching else (False,):
            rows += measure(bundle, batching, png, args)
    print_table(
        ["server", "endpoint", "clients", "req/s", "p50 ms", "p99 ms", "errors", "client CPU", "load"], rows
    )
    target = [r for r in rows if r[0] == "covid-cxr serve" and r[1] == "predict" and r[2] == TARGET_CLIENTS]
    if target:
        r = target[0]
        ok = r[3] >= TARGET_RPS and r[5] <= TARGET_P99_MS and r[6] == 0
        print_table(
            ["target (predict, 8 clients)", "measured", ""],
            [
                [
                    f">= {TARGET_RPS:.0f} req/s, p99 <= {TARGET_P99_MS:.0f} ms, 0 errors",
                    f"{r[3]:.0f} req/s, p99 {r[5]:.0f} ms, {r[6]} errors",
                    verdict(ok),
                ]
            ],
        )


if __name__ == "__main__":
    main()
