"""Does lung-aware preprocessing make a radiography-224 classifier read the lungs, not the source?

One recipe (a preset plus overrides) is trained on radiography-224 three times, with
``preprocess.lungs`` = none, crop and mask. For each run the table gives:

- test-split accuracy and macro one-vs-rest ROC AUC (``covid-cxr evaluate``);
- the share of *external* normal chests called COVID or Viral: the lungs-256 ``*_0`` images (adult
  normals from Montgomery County and Shenzhen, hospitals no classification set here contains) and
  kermany-224 NORMAL (paediatric; radiography-224's Viral class comes from the same Kermany set);
- the Grad-CAM energy share inside the (predicted) lungs over the lungs' share of the image, per
  class (1.0 = the CAM ignores the lungs);
- each class's one-vs-rest ROC AUC with the predicted lungs hidden (high = still tells the class
  apart without the lungs: it reads the source).

A good external score with a high lungs-hidden AUC is not success.

    python benchmarks/cross_source.py --shared ../shared/data                      # full (GPU advised)
    python benchmarks/cross_source.py --shared ../shared/data --per-class 40 \\
        --set train.epochs=3 --set preprocess.size=128                              # reduced, CPU
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_header, print_table  # noqa: E402

from covid_cxr.bundle import load_bundle  # noqa: E402
from covid_cxr.data.manifest import is_image_file  # noqa: E402
from covid_cxr.evaluation.evaluate import class_key, evaluate_run  # noqa: E402
from covid_cxr.training.presets import load_config  # noqa: E402
from covid_cxr.training.train import train_run  # noqa: E402

MODES = ("none", "crop", "mask")
CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def main() -> None:
    """Train the three variants, evaluate them and print one table."""
    args = _args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.out or tempfile.mkdtemp(prefix="cross-source-"))
    data = _training_data(args.shared / "radiography-224", args.per_class, work)
    externals = {
        "lungs-256 *_0": sorted((args.shared / "lungs-256" / "images").glob("*_0.png"))[: args.external],
        "kermany NORMAL": _images(args.shared / "kermany-224" / "test" / "NORMAL")[: args.external],
    }
    print_header("cross-source: preprocess.lungs none / crop / mask", vars(args) | {"work": str(work)})
    rows = [_row(mode, args, data, work, externals) for mode in MODES]
    headers = ["lungs", "test acc", "test AUC", *(f"{e} -> COVID/Viral" for e in externals)]
    headers += [f"CAM in lungs {c}" for c in CLASSES] + [f"AUC lungs hidden {c}" for c in CLASSES]
    print_table(headers, rows)


def _row(mode: str, args: argparse.Namespace, data: Path, work: Path, externals: dict) -> list[str]:
    """One variant: train, evaluate on its test split, score the external normals."""
    cfg = load_config(args.preset, overrides=[*args.set, f"preprocess.lungs={mode}", f"name=cross-{mode}"])
    run = work / mode
    train_run(cfg, data, run, progress=False, cache_dir=work / "cache")
    result = evaluate_run(run, bootstrap=0, explanation_images=args.cam_images)
    head = result["metrics"]["headline"]
    predictor = load_bundle(run / "bundle")
    abnormal = [k for k, c in enumerate(predictor.classes) if class_key(c) != "normal"]
    called = [
        f"{np.isin(predictor.predict_proba(files).argmax(axis=1), abnormal).mean():.2f}"
        for files in externals.values()
    ]
    cam = result["cam_in_lungs"] or {}
    hidden = result["shortcuts"]["lungs_hidden"]["auc_hidden"]
    return [
        mode,
        f"{head['accuracy']:.3f}",
        "-" if head["macro_auc"] is None else f"{head['macro_auc']:.3f}",
        *called,
        *(f"{cam[c]['ratio']:.2f}" if c in cam else "-" for c in CLASSES),
        *(f"{hidden[c]:.2f}" if c in hidden else "-" for c in CLASSES),
    ]


def _training_data(root: Path, per_class: int | None, work: Path) -> Path:
    """radiography-224 itself, or a CSV of its first `per_class` images per class."""
    if per_class is None:
        return root
    rows = [{"path": str(p), "label": c} for c in CLASSES for p in _images(root / c)[:per_class]]
    work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(work / "slice.csv", index=False)
    return work / "slice.csv"


def _images(folder: Path) -> list[Path]:
    """The image files of a folder, sorted."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], help="override KEY=VALUE (repeatable)")
    parser.add_argument("--per-class", type=int, default=None, help="reduced run: images per class")
    parser.add_argument("--external", type=int, default=None, help="at most this many external images")
    parser.add_argument("--cam-images", type=int, default=48, help="test images for the CAM in-lung share")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
