"""Data pipeline: one training epoch of batches, decoding the image files every epoch vs the uint8 cache.

Both sides deliver the same thing to the model: shuffled batches of normalised float32 NCHW tensors
at `--size` px with their labels (the model step itself is left out, so only the data side is timed).

- ``decode every epoch``: the usual notebook Dataset (PIL open + convert RGB, torchvision
  Resize/ToTensor/Normalize per item) in a DataLoader, with `--workers` worker processes;
- ``covid-cxr cache``: ``ImageCache.load_or_build`` (decodes once, kept as an .npy memory map) and
  ``CxrDataModule.train_dataloader`` with normalisation on the device (``on_after_batch_transfer``).

The data are synthetic chest phantoms written as `--source` x `--source` 8-bit PNGs.

    python benchmarks/data_pipeline.py                 # 200 images of 1024 px, ~1 min on 2 cores
    python benchmarks/data_pipeline.py --n 1000 --workers 0,2,4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DecodeEveryEpoch, load_average, median, print_header, print_table, ratio, verdict  # noqa: E402

from covid_cxr.data.cache import ImageCache  # noqa: E402
from covid_cxr.data.datamodule import CxrDataModule  # noqa: E402
from covid_cxr.data.preprocess import normalize  # noqa: E402
from covid_cxr.data.spec import Preprocess  # noqa: E402
from covid_cxr.data.synthetic import synthesize  # noqa: E402

TARGET = 10.0


def epoch_seconds(batches, repeats: int) -> list[float]:
    """Seconds of `repeats` full passes over `batches()` (each pass consumes every batch)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(len(x) for x, _ in batches())
        out.append(time.perf_counter() - start)
    assert count > 0
    return out


def naive_batches(paths: list[str], labels: np.ndarray, args: argparse.Namespace, workers: int):
    """A function yielding one epoch of the baseline's batches."""
    loader = DataLoader(
        DecodeEveryEpoch(paths, labels, args.size),
        batch_size=args.batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda: iter(loader)


def cached_batches(images: np.ndarray, labels: np.ndarray, spec: Preprocess, args: argparse.Namespace):
    """A function yielding one epoch of covid-cxr's batches (normalised as on_after_batch_transfer does)."""
    rows = np.arange(len(labels))
    dm = CxrDataModule(
        images,
        labels,
        {"train": rows, "val": rows[:1]},
        batch_size=args.batch,
        prepare=partial(normalize, spec=spec),
    )
    loader = dm.train_dataloader()
    return lambda: (dm.on_after_batch_transfer(batch, 0) for batch in loader)


def main() -> None:
    """Parse arguments, write the phantoms, time both pipelines side by side, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images in the epoch")
    parser.add_argument("--source", type=int, default=1024, help="side of the PNG files")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--workers", default="0,2", help="DataLoader workers of the baseline, comma-separated"
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline (median reported)")
    args = parser.parse_args()
    print_header(
        "Data pipeline: one epoch",
        {
            "images": f"{args.n} synthetic phantoms, {args.source}x{args.source} grey PNG",
            "batches": f"{args.batch} x 3 x {args.size} x {args.size} float32, shuffled",
            "timed epochs": f"median of {args.epochs}",
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = synthesize(Path(tmp) / "phantoms", args.n, size=args.source)
        print(f"wrote {args.n} phantoms in {time.perf_counter() - start:.0f} s", file=sys.stderr)  # noqa: T201
        paths = manifest["path"].astype(str).tolist()
        labels = manifest["label"].astype("category").cat.codes.to_numpy(dtype=np.int64)
        spec = Preprocess(size=args.size, channels=3, normalize="imagenet")
        rows = []
        for workers in [int(w) for w in args.workers.split(",")]:
            seconds = median(epoch_seconds(naive_batches(paths, labels, args, workers), args.epochs))
            rows.append([f"decode every epoch, {workers} workers", seconds, args.n / seconds, load_average()])
        start = time.perf_counter()
        images = ImageCache(Path(tmp) / "cache").load_or_build(manifest, spec)
        build = time.perf_counter() - start
        rows.append(["covid-cxr cache: build (once, 1 thread)", build, args.n / build, load_average()])
        seconds = median(epoch_seconds(cached_batches(images, labels, spec, args), args.epochs))
        rows.append(["covid-cxr cache: epoch (0 workers)", seconds, args.n / seconds, load_average()])
    best_naive = min(r[1] for r in rows[:-2])
    for row in rows:
        row.insert(3, ratio(best_naive, row[1]))
    print_table(["pipeline", "s / epoch", "img/s", "vs best decode", "load"], rows)
    speedup = best_naive / rows[-1][1]
    print_table(
        ["target", "measured", ""],
        [
            [
                f"cached epoch >= {TARGET:.0f}x faster than decoding",
                f"{speedup:.0f}x",
                verdict(speedup >= TARGET),
            ]
        ],
    )


if __name__ == "__main__":
    main()
