"""CPU inference: one 1024x1024 PNG end to end, and batch throughput at 224 px, per backbone and path.

Paths compared side by side, on the same random-weight model:

- ``naive eager``: what a notebook does: PIL open + convert RGB, torchvision Resize/ToTensor/Normalize,
  the model in plain (contiguous) fp32 eager mode under ``torch.no_grad``;
- ``Predictor torch``: ``load_bundle(..., backend="torch").predict_proba`` (OpenCV decode and resize,
  channels_last model under ``inference_mode``);
- ``Predictor onnx``: ``load_bundle(...)`` with its default backend (ONNX Runtime).

Columns: latency of ``predict_proba([one 1024x1024 PNG file])`` (decode, preprocess, model), throughput
of the model on a preprocessed batch (``predict_tensor`` of 16 x 3 x 224 x 224) and of ``predict_proba``
on 16 PNG files.

    python benchmarks/cpu_inference.py                      # ~1 min on 2 cores
    python benchmarks/cpu_inference.py --archs mobilenet_v2 --repeats 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    chest_png,
    interleaved,
    load_average,
    median,
    naive_transform,
    percentile_ms,
    print_header,
    print_table,
    random_bundle,
    verdict,
)

from covid_cxr.bundle import load_bundle  # noqa: E402
from covid_cxr.models.zoo import build_model  # noqa: E402

TARGET_P50_MS = 50.0
TARGET_BATCH_IPS = 150.0
TARGET_ARCHS = ("mobilenet_v2", "efficientnet_lite0")


class NaiveEager:
    """The notebook baseline: PIL + torchvision transforms, a contiguous fp32 model, no_grad."""

    def __init__(self, bundle: Path, arch: str, size: int, classes: int) -> None:
        self.model = build_model(arch, None, classes, image_size=size, in_chans=3)
        self.model.load_state_dict(torch.load(bundle / "model.pt", weights_only=True))
        self.model.eval()
        self.transform = naive_transform(size)

    def predict_proba(self, paths: list[Path]) -> np.ndarray:
        x = torch.stack([self.transform(Image.open(p).convert("RGB")) for p in paths])
        return self.predict_tensor(x)

    def predict_tensor(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.model(x), dim=1).numpy()


def bench_arch(arch: str, work: Path, png: Path, args: argparse.Namespace) -> list[list]:
    """Rows of the three paths for one backbone, each measurement interleaved across the paths."""
    bundle = random_bundle(arch, args.size, work / arch)
    files = [png] * args.batch
    batch = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    runners = {
        "naive eager": NaiveEager(bundle, arch, args.size, 3),
        "Predictor torch (channels_last)": load_bundle(bundle, backend="torch"),
        "Predictor onnx (default)": load_bundle(bundle, threads=args.ort_threads),
    }
    single = interleaved(
        {k: partial(r.predict_proba, [png]) for k, r in runners.items()}, args.repeats, warmup=3
    )
    tensor = interleaved(
        {k: partial(r.predict_tensor, batch) for k, r in runners.items()}, args.batch_repeats
    )
    e2e = interleaved({k: partial(r.predict_proba, files) for k, r in runners.items()}, args.batch_repeats)
    print(f"  {arch} done", file=sys.stderr, flush=True)  # noqa: T201
    return [
        [
            arch,
            name,
            percentile_ms(single[name], 50),
            percentile_ms(single[name], 90),
            args.batch / median(tensor[name]),
            args.batch / median(e2e[name]),
            load_average(),
        ]
        for name in runners
    ]


def main() -> None:
    """Parse arguments, measure every backbone and path, print the table and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mobilenet_v2,efficientnet_lite0,resnet50")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--source", type=int, default=1024, help="side of the PNG fed to predict")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30, help="timed single-image calls")
    parser.add_argument("--batch-repeats", type=int, default=5, help="timed batch calls")
    parser.add_argument(
        "--ort-threads", type=int, default=0, help="ONNX Runtime threads (0 = product default)"
    )
    args = parser.parse_args()
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    print_header(
        "CPU inference",
        {
            "input": f"{args.source}x{args.source} grey PNG -> {args.size} px",
            "batch": args.batch,
            "repeats": f"{args.repeats} single, {args.batch_repeats} batch",
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        png = chest_png(work / "chest.png", args.source)
        rows = [row for arch in archs for row in bench_arch(arch, work, png, args)]
    print_table(
        [
            "arch",
            "path",
            "1 PNG p50 ms",
            "p90 ms",
            f"batch {args.batch} tensors img/s",
            f"{args.batch} PNG files img/s",
            "load",
        ],
        rows,
    )
    checks = [
        [
            r[0],
            f"{r[2]:.1f} ms <= {TARGET_P50_MS:.0f}",
            verdict(r[2] <= TARGET_P50_MS),
            f"{r[4]:.0f} img/s >= {TARGET_BATCH_IPS:.0f}",
            verdict(r[4] >= TARGET_BATCH_IPS),
        ]
        for r in rows
        if r[0] in TARGET_ARCHS and r[1].startswith("Predictor onnx")
    ]
    if checks:
        print_table(["arch (Predictor onnx)", "single p50", "", "batch throughput", ""], checks)


if __name__ == "__main__":
    main()
