"""What a bundle's reliability fields say per dataset: OOD flags, the gate, abstentions, conformal sets.

For the bundle given, every image goes through ``load_bundle(...).predict_files`` (the product path).
Rows: the run's whole test split (when the bundle sits in a run folder, or with --run), radiography-224,
kermany-224's test part, figure1's labelled images, lungs-256 and the non-chest set of
``covid_cxr.reliability.probes`` (scikit-image's photographs and others, pydicom's CT and MR slices,
noise, a text page). Images the run trained, validated or tested on are left out of the external
rows. Coverage and set size are over the images whose label matches one of the bundle's classes.

    python benchmarks/reliability.py runs/demo/bundle --shared ../shared/data
    python benchmarks/reliability.py RUN/bundle --limit 60 --no-frontal-check    # faster
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, print_header, print_table  # noqa: E402

from covid_cxr.bundle import load_bundle  # noqa: E402
from covid_cxr.data.readers import read_source  # noqa: E402
from covid_cxr.evaluation.evaluate import class_key, labelled_split  # noqa: E402
from covid_cxr.predictor import Prediction, Predictor  # noqa: E402
from covid_cxr.reliability.probes import non_chest_images  # noqa: E402
from covid_cxr.run_dir import RunDir  # noqa: E402


def main() -> None:
    """Predict every dataset's images and print one table."""
    args = _args()
    logging.basicConfig(level=logging.WARNING)
    predictor = load_bundle(args.bundle)
    predictor.frontal_check = args.frontal_check
    run = args.run or (args.bundle.parent if (args.bundle.parent / "manifest.csv").is_file() else None)
    info = predictor.bundle_info
    conformal = info.conformal
    settings = {
        "bundle": args.bundle,
        "run": run or "-",
        "OOD": f"{info.ood.method}, {info.ood.quantile:.0%} of {info.ood.n_val} val" if info.ood else "none",
        "conformal": f"{conformal.method} at {conformal.coverage:.0%}" if conformal else "none",
        "limit per dataset": args.limit,
        "frontal check": args.frontal_check,
    }
    print_header("reliability: OOD flag, gate, abstain and conformal sets per dataset", settings)
    with tempfile.TemporaryDirectory(prefix="reliability-") as work:
        datasets = _datasets(args.shared, run, predictor, Path(work), args.limit)
        rows = [_row(name, frame, predictor) for name, frame in datasets.items()]
    headers = ["dataset", "n", "OOD flagged", "gated", "abstain", "coverage", "n labelled", "mean set size"]
    print_table(headers + ["s / image", "load"], rows)


def _datasets(
    shared: Path, run: Path | None, predictor: Predictor, work: Path, limit: int
) -> dict[str, pd.DataFrame]:
    """Dataset name -> frame of path and label (None where no label is known), at most `limit` rows each."""
    out: dict[str, pd.DataFrame] = {}
    seen: set[str] = set()
    if run is not None:
        manifest = pd.read_csv(run / "manifest.csv")
        seen = {str(Path(p).resolve()) for p in manifest["path"]}
        test = labelled_split(RunDir(run), predictor.classes, "test")
        out["own test split"] = pd.DataFrame({"path": test["path"], "label": test["label"]})
    kermany = read_source(shared / "kermany-224", pneumonia_types=True).manifest
    external = {
        "radiography-224": read_source(shared / "radiography-224").manifest,
        "kermany-224 test": kermany[kermany["split"] == "test"],
        "figure1": read_source(shared / "figure1").manifest,
        "lungs-256": pd.DataFrame({"path": sorted((shared / "lungs-256" / "images").glob("*.png"))}),
    }
    for name, frame in external.items():
        unseen = frame[[str(Path(p).resolve()) not in seen for p in frame["path"]]]
        out[name] = unseen.reindex(columns=["path", "label"])
    out["non-chest"] = pd.DataFrame({"path": non_chest_images(work / "non-chest")}).assign(label=None)
    return {
        name: frame.reset_index(drop=True) if name == "own test split" else _spread(frame, limit)
        for name, frame in out.items()
    }


def _spread(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most `limit` rows, evenly spaced, so every class of a sorted listing is represented."""
    frame = frame.reset_index(drop=True)
    if len(frame) <= limit:
        return frame
    return frame.iloc[np.linspace(0, len(frame) - 1, limit).round().astype(int)]


def _row(name: str, frame: pd.DataFrame, predictor: Predictor) -> list[object]:
    """One table row: rates over the predicted images, coverage over the labelled ones."""
    start = time.perf_counter()
    predictions, failures = predictor.predict_files([str(p) for p in frame["path"]])
    seconds = (time.perf_counter() - start) / len(frame) if len(frame) else float("nan")
    labels = dict(zip(map(str, frame["path"]), frame["label"], strict=True))
    coverage, n_labelled, size = _coverage(predictions, labels, predictor.classes)
    n = f"{len(predictions)}" + (f" ({len(failures)} unreadable)" if failures else "")
    return [
        name,
        n,
        _share(p.ood is not None and bool(p.ood["flagged"]) for p in predictions),
        _share(bool(p.gate and p.gate["reasons"]) for p in predictions),
        _share(bool(p.abstain) for p in predictions),
        coverage,
        n_labelled,
        size,
        seconds,
        load_average(),
    ]


def _coverage(
    predictions: list[Prediction], labels: dict[str, object], classes: list[str]
) -> tuple[float, int, float]:
    """(coverage, images with a label among the classes, mean set size) of the conformal sets."""
    by_key = {class_key(c): c for c in classes}
    hits, sizes = [], []
    for p in predictions:
        label = labels.get(str(p.path))
        truth = by_key.get(class_key(str(label))) if isinstance(label, str) else None
        if truth is None or p.prediction_set is None:
            continue
        hits.append(truth in p.prediction_set)
        sizes.append(len(p.prediction_set))
    if not hits:
        return float("nan"), 0, float("nan")
    return float(np.mean(hits)), len(hits), float(np.mean(sizes))


def _share(flags: object) -> float:
    values = list(flags)  # type: ignore[call-overload]
    return float(np.mean(values)) if values else float("nan")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a bundle folder (RUN/bundle)")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the real data folder")
    parser.add_argument("--run", type=Path, default=None, help="the run folder (default: the bundle's)")
    parser.add_argument("--limit", type=int, default=120, help="at most this many images per external set")
    parser.add_argument(
        "--frontal-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the gate's lung-segmenter check (the product default; ~0.1-0.5 s an image on a CPU)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
