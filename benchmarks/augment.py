"""Training-time augmentation (images/s): per-image torchvision vs kornia vs covid-cxr's batched affine.

The same Keras-style settings (rotation 15, shifts 0.1, shear 10, zoom 0.2, horizontal flip) on a
normalised float batch already on the device, three ways, interleaved call by call:

- ``torchvision per image``: ``v2.RandomAffine`` + ``v2.RandomHorizontalFlip`` called once per image
  (torchvision draws one set of parameters per call, so per-image draws need the loop);
- ``kornia``: ``kornia.augmentation.RandomAffine`` + ``RandomHorizontalFlip`` on the batch (skipped
  when kornia is not installed; it is not a covid-cxr dependency);
- ``covid-cxr``: ``TensorAugment``: one ``affine_grid`` + ``grid_sample`` with a matrix per image.

    python benchmarks/augment.py                  # CPU, ~30 s
    python benchmarks/augment.py --device cuda --batch 128
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, load_average, median, print_header, print_table, ratio  # noqa: E402

from covid_cxr.config import AugmentConfig  # noqa: E402
from covid_cxr.data.augment import TensorAugment  # noqa: E402
from covid_cxr.data.spec import Preprocess  # noqa: E402

SETTINGS = AugmentConfig(
    rotation=15,
    width_shift=0.1,
    height_shift=0.1,
    shear=10,
    zoom=0.2,
    horizontal_flip=True,
    fill_mode="constant",
)


def per_image() -> nn.Module:
    """torchvision v2 transforms applied image by image (one random draw per call)."""
    steps = nn.Sequential(
        v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10),
        v2.RandomHorizontalFlip(),
    )

    class Loop(nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return torch.stack([steps(image) for image in batch])

    return Loop()


def kornia_pipeline() -> nn.Module | None:
    """kornia's batched RandomAffine with per-sample parameters, or None when kornia is missing."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return nn.Sequential(
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.8, 1.2, 0.8, 1.2), shear=10, p=1.0),
        K.RandomHorizontalFlip(p=0.5),
    )


def run(module: nn.Module, batch: torch.Tensor) -> None:
    """One augmentation call, finished on the device."""
    module(batch)
    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)


def main() -> None:
    """Time the three paths per image size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", default="64x1,224x3", help="comma-separated SIZExCHANNELS")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print_header(
        "Augmentation throughput: per-image torchvision vs kornia vs covid-cxr (batched)",
        {
            "device": device,
            "torch threads": torch.get_num_threads(),
            "batch": args.batch,
            "settings": "rotation 15, shift 0.1, shear 10, zoom 0.2, horizontal flip",
        },
    )
    rows = []
    for item in args.sizes.split(","):
        size, channels = (int(v) for v in item.split("x"))
        batch = torch.randn(args.batch, channels, size, size, device=device)
        paths = {
            "torchvision per image": per_image(),
            "covid-cxr": TensorAugment(SETTINGS, Preprocess(size=size, channels=channels)),
        }
        if (kornia := kornia_pipeline()) is not None:
            paths["kornia"] = kornia
        paths = {name: module.to(device) for name, module in paths.items()}

        seconds = interleaved({name: partial(run, m, batch) for name, m in paths.items()}, args.repeats)
        base = args.batch / median(seconds["torchvision per image"])
        for name, times in seconds.items():
            rate = args.batch / median(times)
            rows.append(
                [
                    f"{size} px x {channels}",
                    name,
                    median(times) * 1000,
                    rate,
                    ratio(rate, base),
                    load_average(),
                ]
            )
    print_table(["images", "path", "ms / batch", "img/s", "vs per image", "load"], rows)


if __name__ == "__main__":
    main()
