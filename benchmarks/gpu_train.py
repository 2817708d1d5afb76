"""Training throughput (images/s): a plain fp32 loop decoding files vs covid-cxr's path vs the ceiling.

For each architecture, three ways of training the same model (Adam, cross-entropy) side by side:

- ``plain``: the usual script: a DataLoader whose workers decode every PNG every epoch (PIL +
  torchvision transforms), fp32, contiguous NCHW, batches copied to the device each step;
- ``covid-cxr``: the product's own path: ``ImageCache`` (uint8, decoded once), ``build_stage`` and
  ``make_trainer`` (Lightning) with ``train.precision`` bf16-mixed on CUDA, channels_last, batches
  normalised on the device, and on CUDA the whole uint8 cache moved to the GPU once
  (``CxrDataModule.setup``) so batches are gathered there; ``--compile`` sets ``train.compile``;
- ``ceiling``: the same model, precision, layout (and compile) on random tensors already on the device:
  no data pipeline at all.

Throughput is measured from the end of the first batch to the end of the last batch of every epoch but
the first (warm-up, cuDNN autotuning and compilation), with the device synchronised at both ends;
validation is not timed. Runs on CUDA when present, else on the CPU with tiny sizes (a CPU run says so).

    python benchmarks/gpu_train.py                         # CPU: ~1 min with tiny defaults
    python benchmarks/gpu_train.py --compile               # on an H100: 224 px, 4096 images, batch 128
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DecodeEveryEpoch, load_average, print_header, print_table, ratio, verdict  # noqa: E402

from covid_cxr.config import RunConfig  # noqa: E402
from covid_cxr.data.cache import ImageCache  # noqa: E402
from covid_cxr.data.synthetic import synthesize  # noqa: E402
from covid_cxr.models.zoo import build_model  # noqa: E402
from covid_cxr.training.train import build_stage, make_trainer  # noqa: E402

TARGET_VS_PLAIN = 3.0
TARGET_VS_CEILING = 0.8
GPU_DEFAULTS = {"size": 224, "source": 1024, "n": 4096, "unique": 64, "batch": 128, "workers": 8, "epochs": 3}
CPU_DEFAULTS = {"size": 64, "source": 256, "n": 160, "unique": 32, "batch": 16, "workers": 2, "epochs": 3}


class Meter:
    """Images and seconds between the end of batch 0 and the end of the last batch of measured epochs."""

    def __init__(self, device: torch.device, skip_epochs: int = 1) -> None:
        self.device, self.skip = device, skip_epochs
        self.images, self.seconds, self._start = 0, 0.0, 0.0

    def batch_end(self, epoch: int, index: int, size: int, last: bool) -> None:
        """Call after every training step."""
        if epoch < self.skip:
            return
        if index == 0:
            self._start = self._now()
            return
        self.images += size
        if last:
            self.seconds += self._now() - self._start

    def rate(self) -> float:
        """Images per second over the measured windows."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class MeterCallback(L.Callback):
    """Feeds a Meter from Lightning's training loop."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        self.meter.batch_end(trainer.current_epoch, batch_idx, len(batch[1]), last)


def make_data(work: Path, args: argparse.Namespace) -> pd.DataFrame:
    """`n` PNG files (hard links to `unique` phantoms) and their split manifest: one val batch, rest train."""
    unique = synthesize(work / "unique", args.unique, size=args.source, seed=1)
    folder = work / "files"
    folder.mkdir()
    rows = []
    for i in range(args.n):
        src = unique.iloc[i % len(unique)]
        dst = folder / f"{i:06d}.png"
        os.link(src["path"], dst)
        rows.append(
            {
                "path": str(dst),
                "label": src["label"],
                "sha256": src["sha256"],
                "split": "val" if i < args.batch else "train",
            }
        )
    return pd.DataFrame(rows)


def plain(arch: str, manifest: pd.DataFrame, classes: list[str], args, device: torch.device) -> float:
    """img/s of the plain fp32 loop with a decoding DataLoader."""
    train = manifest[manifest["split"] == "train"]
    labels = train["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    loader = DataLoader(
        DecodeEveryEpoch(train["path"].tolist(), labels, args.size),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False  # PyTorch's default (Lightning turns it on for covid-cxr)
    model = build_model(arch, None, len(classes), image_size=args.size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    meter = Meter(device)
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            meter.batch_end(epoch, i, len(y), i == len(loader) - 1)
    return meter.rate()


def run_config(arch: str, args: argparse.Namespace, device: torch.device) -> RunConfig:
    """The covid-cxr run: full training at `size` px, Adam, bf16-mixed on CUDA."""
    return RunConfig.model_validate(
        {
            "name": "gpu-train-bench",
            "preprocess": {"size": args.size, "channels": 3, "normalize": "imagenet"},
            "model": {"arch": arch, "pretrained": "none", "freeze": "none"},
            "optim": {"lr": 1e-3},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch,
                "precision": args.precision,
                "accelerator": "gpu" if device.type == "cuda" else "cpu",
                "devices": "1",
                "seed": 0,
                "compile": args.compile,
            },
        }
    )


def covid_cxr(arch: str, manifest: pd.DataFrame, work: Path, args, device: torch.device) -> float:
    """img/s of the product's training path (build_stage + make_trainer + fit)."""
    cfg = run_config(arch, args, device)
    stage = build_stage(cfg, manifest, work / "cache")
    meter = Meter(device)
    trainer = make_trainer(stage.cfg, work / f"run-{arch}", progress=False, extra=[MeterCallback(meter)])
    trainer.fit(stage.module, datamodule=stage.datamodule)
    return meter.rate()


def ceiling(arch: str, classes: int, args: argparse.Namespace, device: torch.device) -> float:
    """img/s of the same model, precision and layout on random tensors already on the device."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as make_trainer sets it for covid-cxr
    model = build_model(arch, None, classes, image_size=args.size).to(
        device, memory_format=torch.channels_last
    )
    if args.compile:
        model.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, classes, (args.batch,), device=device)
    bf16 = args.precision.startswith("bf16")
    steps = max(4, (args.n - args.batch) // args.batch)
    meter = Meter(device)
    for epoch in range(args.epochs):
        for i in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            meter.batch_end(epoch, i, args.batch, i == steps - 1)
    return meter.rate()


def release(device: torch.device) -> None:
    """Free what the previous path left (Lightning keeps reference cycles), so the next starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args() -> tuple[argparse.Namespace, torch.device]:
    """Arguments, with defaults for the device found (GPU_DEFAULTS or CPU_DEFAULTS)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--archs", default="resnet50,mobilenet_v2")
    for key in GPU_DEFAULTS:
        parser.add_argument(
            f"--{key}",
            type=int,
            default=None,
            help=f"default {GPU_DEFAULTS[key]} on CUDA, {CPU_DEFAULTS[key]} on the CPU",
        )
    parser.add_argument(
        "--precision",
        default=None,
        help="Lightning precision of covid-cxr and the ceiling "
        "(default bf16-mixed on CUDA, 32-true on the CPU)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (covid-cxr and ceiling)"
    )
    args = parser.parse_args()
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if args.n < 3 * args.batch or args.epochs < 2:
        parser.error("need --n >= 3 x --batch (two train batches and one val batch) and --epochs >= 2")
    return args, device


def main() -> None:
    """Generate the files, build the cache, measure the three paths per architecture, print the table."""
    args, device = parse_args()
    warnings.filterwarnings("ignore", module="lightning")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "covid_cxr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    run = "CUDA run" if device.type == "cuda" else "CPU run (tiny sizes; the targets are meant for a GPU)"
    print_header(
        "Training throughput: plain loop vs covid-cxr vs ceiling",
        {
            "device": f"{device} - {run}",
            "data": f"{args.n} PNGs of {args.source} px ({args.unique} distinct phantoms) -> {args.size} px",
            "batch": args.batch,
            "epochs": f"{args.epochs} (first not timed)",
            "plain": f"fp32, contiguous, DataLoader with {args.workers} decoding workers",
            "covid-cxr / ceiling": f"{args.precision}, channels_last, compile {args.compile}",
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_data(work, args)
        classes = sorted(manifest["label"].unique())
        spec = run_config(archs[0], args, device).preprocess
        start = time.perf_counter()
        ImageCache(work / "cache").load_or_build(manifest, spec, workers=os.cpu_count() or 1)
        build = time.perf_counter() - start
        rows = []
        for arch in archs:
            rates = {}
            for name, path in (
                ("plain", partial(plain, arch, manifest, classes, args, device)),
                ("covid-cxr", partial(covid_cxr, arch, manifest, work, args, device)),
                ("ceiling", partial(ceiling, arch, len(classes), args, device)),
            ):
                rates[name] = path()
                release(device)
            rows.append(
                [
                    arch,
                    *rates.values(),
                    ratio(rates["covid-cxr"], rates["plain"]),
                    f"{rates['covid-cxr'] / rates['ceiling']:.0%}",
                    load_average(),
                ]
            )
            print(f"  {arch} done", file=sys.stderr, flush=True)  # noqa: T201
    print(f"image cache built once in {build:.1f} s ({args.n} files, {os.cpu_count()} threads)\n")  # noqa: T201
    print_table(
        [
            "arch",
            "plain img/s",
            "covid-cxr img/s",
            "ceiling img/s",
            "covid-cxr / plain",
            "covid-cxr / ceiling",
            "load",
        ],
        rows,
    )
    checks = []
    for arch, p, c, top, *_ in rows:
        checks.append(
            [
                arch,
                f"{c / p:.1f}x >= {TARGET_VS_PLAIN:.0f}x",
                verdict(c / p >= TARGET_VS_PLAIN),
                f"{c / top:.0%} >= {TARGET_VS_CEILING:.0%}",
                verdict(c / top >= TARGET_VS_CEILING),
            ]
        )
    print_table(["arch", "vs plain", "", "vs ceiling", ""], checks)


if __name__ == "__main__":
    main()
