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
"client CPU" is the share of one core the load generator itself used. "peak RSS" is the largest
resident memory of the server's process tree, sampled every 20 ms during the row.

``--hostile`` instead sends the memory-amplifying payloads of issue 14 one at a time (a 6300 x 6300 RGB
PNG to /predict and /explain, three concurrent /explain of it, a 7000 x 7000 RLE DICOM, a 40-frame
4000 x 4000 RLE DICOM) and reports each one's status and peak RSS growth over the idle server, then
the idle RSS of one worker and of the parent and workers of ``--workers 2``.

    python benchmarks/server_load.py              # ~4 min on 2 cores: 50 clients x 60 s, 8 on explain
    python benchmarks/server_load.py --clients 1,8 --seconds 15 --batching
    python benchmarks/server_load.py --endpoints floats   # seed 000's float-array body
    python benchmarks/server_load.py --hostile    # ~2 min

``--batching`` replaces the former benchmarks/serve_batching.py: the same load against the server with
the micro-batcher on (max 16 rows, 5 ms wait).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def server_command(
    bundle: Path, port: int, batching: bool, workers: int = 1, frontal_check: bool = True
) -> list[str]:
    """`covid-cxr serve` (the CLI), or serve(..., batching=True) which the CLI does not expose."""
    if not batching:
        cli = Path(sys.executable).with_name("covid-cxr")
        command = [str(cli), "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
        command += [] if frontal_check else ["--no-frontal-check"]
        return command + (["--workers", str(workers)] if workers > 1 else [])
    code = (
        "import sys; from covid_cxr.serving import serve; "
        f"serve(sys.argv[1], port={port}, log_level='warning', batching=True, frontal_check={frontal_check})"
    )
    return [sys.executable, "-c", code, str(bundle)]


def start_server(
    bundle: Path, batching: bool, workers: int = 1, frontal_check: bool = True
) -> tuple[subprocess.Popen, str]:
    """Start the server; return it and its URL once /healthz answers."""
    port = free_port()
    command = server_command(bundle, port, batching, workers, frontal_check)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def _children(pid: int) -> list[int]:
    """Child process ids of `pid`, from /proc."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    out: list[int] = []
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of one process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MiB."""
    pending, total = [pid], 0.0
    while pending:
        current = pending.pop()
        total += rss_mib(current)
        pending += _children(current)
    return total


@contextmanager
def peak_rss(pid: int, every_s: float = 0.02) -> Iterator[dict[str, float]]:
    """Sample the process tree's RSS every `every_s` while the block runs: {"before", "peak"} in MiB."""
    result = {"before": tree_rss_mib(pid), "peak": 0.0}
    result["peak"] = result["before"]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result["peak"] = max(result["peak"], tree_rss_mib(pid))
            done.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["peak"] = max(result["peak"], tree_rss_mib(pid))


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


def load(url: str, request: dict, clients: int, seconds: float, pid: int | None = None) -> dict[str, float]:
    """requests/s, p50/p99 latency (ms), errors, client CPU and the server tree's peak RSS (MiB) of
    `clients` threads for `seconds`."""
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
    with peak_rss(pid or os.getpid()) as rss:
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
        "peak_rss": rss["peak"] if pid else float("nan"),
    }


def measure(bundle: Path, batching: bool, png: bytes, args: argparse.Namespace) -> list[list]:
    """Rows for one server setting: every endpoint at every client count."""
    proc, url = start_server(bundle, batching, frontal_check=args.frontal_check)
    rows = []
    try:
        for endpoint in args.endpoints.split(","):
            request = requests_for(png, args.size)[endpoint]
            seconds = args.explain_seconds if endpoint == "explain" else args.seconds
            counts = args.explain_clients if endpoint == "explain" else args.clients
            load(url, request, 2, 2)  # warm-up
            for clients in [int(c) for c in counts.split(",")]:
                r = load(url, request, clients, seconds, proc.pid)
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
                        f"{r['peak_rss']:.0f}",
                        load_average(),
                    ]
                )
                print(f"  {rows[-1][:3]} done", file=sys.stderr, flush=True)  # noqa: T201
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def tiled_png(side: int) -> bytes:
    """A `side` x `side` RGB checkerboard PNG: tiny file, huge decoded image."""
    from PIL import Image

    y, x = np.ogrid[:side, :side]
    tile = (((x // 64 + y // 64) % 2) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([tile, tile // 2, 255 - tile])).save(buf, format="PNG")
    return buf.getvalue()


def _rle_plane(rows: int, cols: int, value: int) -> bytes:
    """One DICOM RLE segment of a constant byte plane, each row encoded on its own (PS3.5 G.3.1)."""
    row = bytearray()
    left = cols
    while left > 0:
        run = min(128, left)
        row += bytes([257 - run, value]) if run > 1 else bytes([0, value])
        left -= run
    plane = bytes(row) * rows
    return plane + b"\0" * (len(plane) % 2)


def rle_dicom(rows: int, cols: int, frames: int = 1) -> bytes:
    """A 16-bit MONOCHROME2 RLE Lossless DICOM of `frames` constant frames: small file, large pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

    high, low = _rle_plane(rows, cols, 0x08), _rle_plane(rows, cols, 0x00)
    header = struct.pack("<16I", 2, 64, 64 + len(high), *([0] * 13))
    frame = header + high + low
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = RLELossless
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([frame] * frames)
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def hostile_payloads(png_side: int, dicom_side: int, frame_side: int, frames: int) -> list[tuple]:
    """(label, endpoint, file name, bytes, concurrent requests) of each hostile payload."""
    png = tiled_png(png_side)
    single = rle_dicom(dicom_side, dicom_side)
    multi = rle_dicom(frame_side, frame_side, frames)
    mb = lambda data: f"{len(data) / 1e6:.2f} MB"  # noqa: E731
    return [
        (f"PNG {png_side}^2 RGB ({mb(png)})", "/predict", "big.png", png, 1),
        (f"PNG {png_side}^2 RGB ({mb(png)})", "/explain", "big.png", png, 1),
        (f"PNG {png_side}^2 RGB ({mb(png)})", "/explain", "big.png", png, 3),
        (f"RLE DICOM {dicom_side}^2 ({mb(single)})", "/predict", "big.dcm", single, 1),
        (f"RLE DICOM {frames} x {frame_side}^2 ({mb(multi)})", "/predict", "frames.dcm", multi, 1),
        (f"RLE DICOM {frames} x {frame_side}^2 ({mb(multi)})", "/explain", "frames.dcm", multi, 1),
    ]


def hostile(bundle: Path, args: argparse.Namespace) -> tuple[list[list], list[list]]:
    """Rows of the hostile-payload table and of the idle-RSS table."""
    payloads = hostile_payloads(args.png_side, args.dicom_side, args.frame_side, args.frames)
    rows = []
    proc, url = start_server(bundle, False)
    try:
        idle = tree_rss_mib(proc.pid)
        for label, endpoint, name, data, concurrent in payloads:
            statuses: list[int] = []

            def send(
                data: bytes = data, endpoint: str = endpoint, name: str = name, statuses: list = statuses
            ) -> None:
                with httpx.Client(base_url=url, timeout=600) as client:
                    statuses.append(client.post(endpoint, files={"file": (name, data)}).status_code)

            time.sleep(1.0)  # let the allocator settle after the previous payload
            threads = [threading.Thread(target=send) for _ in range(concurrent)]
            with peak_rss(proc.pid) as rss:
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.perf_counter() - start
            growth = rss["peak"] - rss["before"]
            rows.append(
                [
                    label,
                    endpoint,
                    concurrent,
                    ",".join(map(str, sorted(statuses))),
                    f"{growth:.0f}",
                    f"{rss['peak']:.0f}",
                    elapsed,
                    load_average(),
                ]
            )
            print(f"  {rows[-1][:4]} done", file=sys.stderr, flush=True)  # noqa: T201
    finally:
        proc.terminate()
        proc.wait(30)
    idle_rows = [["--workers 1", "server", f"{idle:.0f}"]]
    proc, url = start_server(bundle, False, workers=2)
    try:
        time.sleep(2.0)
        workers = _children(proc.pid)
        idle_rows.append(["--workers 2", "parent", f"{rss_mib(proc.pid):.0f}"])
        idle_rows += [["--workers 2", f"child {i}", f"{rss_mib(pid):.0f}"] for i, pid in enumerate(workers)]
    finally:
        proc.terminate()
        proc.wait(30)
    return rows, idle_rows


def main() -> None:
    """Parse arguments, run every setting, print the table and the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--source", type=int, default=1024, help="side of the PNG each request sends")
    parser.add_argument("--clients", default="50", help="concurrent clients, comma-separated")
    parser.add_argument("--explain-clients", default="8", help="concurrent clients on explain")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--explain-seconds", type=float, default=60)
    parser.add_argument("--endpoints", default="predict,upload,explain")
    parser.add_argument("--batching", action="store_true", help="also run with the micro-batcher on")
    parser.add_argument("--hostile", action="store_true", help="the hostile-payload memory run instead")
    parser.add_argument(
        "--frontal-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the input gate's lung-segmenter check on /predict, /explain and :explain (the server default)",
    )
    parser.add_argument("--png-side", type=int, default=6300)
    parser.add_argument("--dicom-side", type=int, default=7000)
    parser.add_argument("--frame-side", type=int, default=4000)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = random_bundle(args.arch, args.size, work / "bundle")
        if args.hostile:
            print_header("Hostile payloads", {"server": f"covid-cxr serve, {args.arch} at {args.size} px"})
            rows, idle_rows = hostile(bundle, args)
            print_table(
                [
                    "payload",
                    "endpoint",
                    "concurrent",
                    "status",
                    "peak RSS growth MiB",
                    "peak RSS MiB",
                    "s",
                    "load",
                ],
                rows,
            )
            print_table(["server", "process", "idle RSS MiB"], idle_rows)
            return
        png = chest_png(work / "chest.png", args.source).read_bytes()
        print_header(
            "Server load",
            {
                "server": f"covid-cxr serve, 1 worker, {args.arch} at {args.size} px, default backend "
                f"(onnx), "
                f"frontal check {'on' if args.frontal_check else 'off'}",
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
        [
            "server",
            "endpoint",
            "clients",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "client CPU",
            "peak RSS MiB",
            "load",
        ],
        rows,
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
