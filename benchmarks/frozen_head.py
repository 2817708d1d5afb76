"""Frozen-backbone training: the backbone run on every image every epoch vs the head on cached features.

Both runs go through covid-cxr's own ``fit_split`` with the same config, data, splits and seed; the
only difference is ``train.cache_features``:

- ``plain``: the full model trains (backbone frozen, BatchNorm in eval mode), so every epoch runs
  the backbone forward on every train and val image;
- ``cached features``: ``backbone_features`` runs the backbone once over all images, then only the head
  trains, on those features (the path ``train_run`` takes for frozen, unaugmented configs).

Both read the same preprocessed image cache (built before timing). "train" is the time from the start
of ``fit_split`` to the end of ``Trainer.fit`` (feature pass included); "run" adds testing the best
checkpoint and writing the bundle (ONNX export included), which both paths share.

    python benchmarks/frozen_head.py                        # ~1.5 min on 2 cores
    python benchmarks/frozen_head.py --epochs 50 --arch resnet50 --pretrained none
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, print_header, print_table, ratio, verdict  # noqa: E402

from covid_cxr.config import RunConfig  # noqa: E402
from covid_cxr.data.cache import ImageCache  # noqa: E402
from covid_cxr.data.synthetic import synthesize  # noqa: E402
from covid_cxr.training.train import fit_split, prepare_manifest  # noqa: E402

TARGET = 10.0


class FitClock(L.Callback):
    """Records when Trainer.fit ends."""

    def __init__(self) -> None:
        self.fit_end = float("nan")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_end = time.perf_counter()


def config(args: argparse.Namespace, cache_features: bool) -> RunConfig:
    """The frozen, unaugmented run of this benchmark."""
    return RunConfig.model_validate(
        {
            "name": "frozen-head-bench",
            "preprocess": {"size": args.size, "channels": 3, "normalize": "imagenet"},
            "model": {
                "arch": args.arch,
                "pretrained": args.pretrained,
                "freeze": "all",
                "head": {"pooling": "gap", "hidden": [64], "dropout": [0.2]},
            },
            "optim": {"lr": 3e-3},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch,
                "accelerator": args.accelerator,
                "seed": 7,
                "cache_features": cache_features,
            },
        }
    )


def timed_run(args: argparse.Namespace, manifest, work: Path, cache_features: bool) -> list:
    """[train s, run s, val accuracy, test accuracy] of one fit_split."""
    clock = FitClock()
    cfg = config(args, cache_features)
    start = time.perf_counter()
    result = fit_split(
        cfg,
        manifest,
        work / f"run-{cache_features}",
        progress=False,
        cache_dir=work / "cache",
        callbacks=[clock],
    )
    total = time.perf_counter() - start
    m = result.metrics
    return [
        clock.fit_end - start,
        total,
        m.get("val_accuracy", float("nan")),
        m.get("test_accuracy", float("nan")),
    ]


def main() -> None:
    """Parse arguments, write phantoms, train both ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="phantoms (split 76/14/10 %% train/val/test)")
    parser.add_argument("--source", type=int, default=256, help="side of the phantom PNGs")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument(
        "--pretrained", default="imagenet", help="imagenet (offline for efficientnet_lite0) | none"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    args = parser.parse_args()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "covid_cxr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print_header(
        "Frozen backbone: plain vs cached features",
        {
            "model": f"{args.arch} ({args.pretrained} weights, frozen) + GAP-Dense 64-softmax",
            "data": f"{args.n} phantoms, {args.source} px PNG -> {args.size} px",
            "training": f"{args.epochs} epochs, batch {args.batch}, Adam 3e-3, seed 7",
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "phantoms", args.n, size=args.source, seed=3)
        cfg = config(args, True)
        manifest = prepare_manifest(cfg, work / "phantoms", work / "prep")
        ImageCache(work / "cache").load_or_build(manifest, cfg.preprocess)
        rows = []
        for cache_features in (False, True):
            name = "cached features" if cache_features else "plain (backbone every epoch)"
            rows.append([name, *timed_run(args, manifest, work, cache_features), load_average()])
            print(f"  {name} done", file=sys.stderr, flush=True)  # noqa: T201
    plain, cached = rows
    for row in rows:
        row.insert(3, ratio(plain[1], row[1]))
    print_table(["path", "train s", "run s", "train speed-up", "val acc", "test acc", "load"], rows)
    speedup = plain[1] / cached[1]
    same = abs(plain[-3] - cached[-3]) <= 0.05 and abs(plain[-2] - cached[-2]) <= 0.05
    print_table(
        ["target", "measured", ""],
        [
            [f"cached >= {TARGET:.0f}x faster to train", f"{speedup:.1f}x", verdict(speedup >= TARGET)],
            [
                "same accuracy (within 0.05)",
                f"val {plain[-3]:.3f} vs {cached[-3]:.3f}, test {plain[-2]:.3f} vs {cached[-2]:.3f}",
                verdict(same),
            ],
        ],
    )


if __name__ == "__main__":
    main()
