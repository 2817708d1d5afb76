"""Will it hold at another hospital? Train on radiography-224 alone vs + kermany-224, with and without
source_class balancing, and evaluate each on external sets: lungs-256 adult normals (`*_0`), the Kermany
test split (never trained on) and figure1's labelled images.

Each model is the demo preset (frozen offline EfficientNet-Lite0, head on cached features), so one run
takes a few minutes on 2 CPU cores. Prints one Markdown table: internal metrics, and per external set
the share of non-COVID images called COVID (all of them, classes the model lacks included), COVID
recall, macro ROC AUC with its 95 % interval and the macro AUC with the lungs hidden; plus the source
predictability of the model's features on its test split.

    python benchmarks/generalisation.py --data ../shared/data      # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from covid_cxr.bundle import load_bundle
from covid_cxr.config import SourceConfig
from covid_cxr.evaluation.evaluate import evaluate_run
from covid_cxr.training.presets import load_config
from covid_cxr.training.train import train_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_header, print_table  # noqa: E402

KERMANY_MAP = {"NORMAL": "Normal", "viral": "Viral Pneumonia", "bacterial": "-"}


def links(target: Path, files: list[Path]) -> Path:
    """A folder of symbolic links to `files`."""
    target.mkdir(parents=True)
    for f in files:
        (target / f.name).symlink_to(f.resolve())
    return target


def layouts(data: Path, work: Path) -> dict[str, Path]:
    """Kermany's train part alone (to train on), its test part alone, and a folder of lungs-256 normals."""
    for part in ("train", "test"):
        for folder in ("NORMAL", "PNEUMONIA"):
            links(
                work / f"kermany-{part}" / part / folder,
                sorted((data / "kermany-224" / part / folder).iterdir()),
            )
    links(work / "lungs-256-normals" / "Normal", sorted((data / "lungs-256" / "images").glob("*_0.png")))
    return {
        "kermany-train": work / "kermany-train",
        "kermany-test": work / "kermany-test",
        "lungs": work / "lungs-256-normals",
    }


def models(data: Path, paths: dict[str, Path]) -> dict[str, tuple[list[SourceConfig], str]]:
    """Model name -> (training sources, data.balance)."""
    radiography = SourceConfig(path=str(data / "radiography-224"))
    kermany = SourceConfig(
        path=str(paths["kermany-train"]),
        name="kermany-224",
        options={"pneumonia_types": True},
        map=KERMANY_MAP,
    )
    return {
        "radiography": ([radiography], "none"),
        "radiography+kermany": ([radiography, kermany], "none"),
        "radiography+kermany, source_class": ([radiography, kermany], "source_class"),
    }


def externals(data: Path, paths: dict[str, Path]) -> dict[str, tuple[Path, dict]]:
    """External set name -> (path, reader options)."""
    return {
        "kermany test": (paths["kermany-test"], {"pneumonia_types": True}),
        "figure1": (data / "figure1", {}),
    }


def train(name: str, sources: list[SourceConfig], balance: str, work: Path, size: int, epochs: int) -> Path:
    """One demo-preset run; its folder."""
    overrides = [
        f"preprocess.size={size}",
        f"train.epochs={epochs}",
        "train.accelerator=cpu",
        f"data.balance={balance}",
    ]
    cfg = load_config("demo", None, overrides)
    data = cfg.data.model_copy(
        update={"sources": sources}
        if len(sources) > 1
        else {"source": sources[0].path, "reader": sources[0].reader, "reader_options": sources[0].options}
    )
    run = work / "runs" / name.replace("+", "_").replace(", ", "_")
    train_run(
        cfg.model_copy(update={"data": data, "name": run.name}),
        None,
        run,
        progress=False,
        cache_dir=work / "cache",
    )
    return run


def row(model: str, dataset: str, result: dict) -> dict:
    """The table's cells for one evaluation."""
    head = result["metrics"]["headline"]
    ci = (result.get("intervals") or {}).get("values", {}).get("macro_auc") or {}
    fc = result.get("false_covid") or {}
    hidden = [
        v for v in (result["shortcuts"]["lungs_hidden"].get("auc_hidden") or {}).values() if v is not None
    ]
    sp = result.get("source_predictability") or {}
    aucs = [v["auc"] for v in sp.get("per_class", {}).values() if v.get("auc") is not None]
    return {
        "model": model,
        "dataset": dataset,
        "n": result["dataset"]["n_evaluated"] + fc.get("n_outside_model_classes", 0),
        "accuracy": _f(head.get("accuracy")),
        "macro AUC (95 % CI)": f"{_f(head.get('macro_auc'))} ({_f(ci.get('lower'))}-{_f(ci.get('upper'))})",
        "non-COVID called COVID": f"{_f(fc.get('share'))} ({fc.get('called_covid')}/{fc.get('n_non_covid')})",
        "COVID recall": _f(fc.get("covid_recall")),
        "macro AUC lungs hidden": _f(sum(hidden) / len(hidden)) if hidden else "-",
        "source predictability AUC": _f(max(aucs)) if aucs else "-",
    }


def normals_row(model: str, run: Path, folder: Path) -> dict:
    """lungs-256 adult normals: one class, so evaluate (which needs 2 matched classes) is replaced by the
    bundle's predictions: the share called COVID is the only question that makes sense there."""
    files = sorted(folder.iterdir())
    called = sum(p.label == "COVID" for p in load_bundle(run / "bundle").predict_files(files)[0])
    cells = dict.fromkeys(["accuracy", "macro AUC (95 % CI)", "COVID recall", "macro AUC lungs hidden"], "-")
    cells["source predictability AUC"] = "-"
    share = f"{_f(called / len(files))} ({called}/{len(files)})"
    return {
        "model": model,
        "dataset": "lungs-256 normals",
        "n": len(files),
        **cells,
        "non-COVID called COVID": share,
    }


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--size", type=int, default=128, help="image side (the demo preset's is 128)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = layouts(args.data, work)
        for model, (sources, balance) in models(args.data, paths).items():
            run = train(model, sources, balance, work, args.size, args.epochs)
            common = dict(bootstrap=args.bootstrap, explanation_images=0, gallery_per_class=0)
            rows.append(row(model, "test split", evaluate_run(run, **common)))
            print(f"  {model} trained and tested", file=sys.stderr, flush=True)  # noqa: T201
            for dataset, (path, options) in externals(args.data, paths).items():
                rows.append(row(model, dataset, evaluate_run(run, path, reader_options=options, **common)))
            rows.append(normals_row(model, run, paths["lungs"] / "Normal"))
            for r in rows[-4:]:
                print(" | ".join(str(r[k]) for k in rows[0]), file=sys.stderr, flush=True)  # noqa: T201
    settings = {"preset": "demo", "size": args.size, "epochs": args.epochs, "bootstrap": args.bootstrap}
    print_header("Generalisation: internal vs external", settings)
    print_table(list(rows[0]), [[r[k] for k in rows[0]] for r in rows])


if __name__ == "__main__":
    main()
