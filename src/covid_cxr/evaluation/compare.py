"""Compare evaluated runs: seed 000's table (Category, Model, Precision, Recall, F1, Accuracy), made honest.

Each row names the run, the dataset it was tested on, the number of images and a fingerprint of the
image list, and the accuracy carries its 95 % interval. Runs tested on different images are not
comparable: :func:`compare_runs` marks them (the ``Test set`` column differs and ``same_test_set`` is
False) and refuses them with ``strict=True``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covid_cxr.errors import DataError
from covid_cxr.io import atomic_write_text
from covid_cxr.run_dir import METRICS_JSON, TEST, RunDir

COLUMNS = [
    "Run",
    "Model",
    "Dataset",
    "n",
    "Test set",
    "Category",
    "Precision",
    "Recall",
    "F1",
    "Accuracy",
    "Accuracy 95% CI",
]


@dataclass
class Comparison:
    """The table, and whether every run was tested on the very same images."""

    table: pd.DataFrame
    test_sets: dict[str, list[str]]  # fingerprint -> the runs tested on it

    @property
    def same_test_set(self) -> bool:
        """True when all runs were evaluated on one image list."""
        return len(self.test_sets) == 1


def compare_runs(run_dirs: Sequence[str | Path], dataset: str = TEST, strict: bool = False) -> Comparison:
    """One row per run and class from each run's evaluation on `dataset` ('test' = its own test split).

    With `strict`, runs tested on different images raise DataError instead of being marked.
    """
    if not run_dirs:
        raise DataError("compare needs at least one run folder")
    results = [_read(RunDir(run), dataset) for run in run_dirs]
    test_sets: dict[str, list[str]] = {}
    for run, result in results:
        test_sets.setdefault(_fingerprint(result), []).append(run.name)
    if strict and len(test_sets) > 1:
        raise DataError(
            f"the runs were tested on {len(test_sets)} different image sets: {_describe(test_sets)}"
        )
    rows = [_rows(run, result, _fingerprint(result)) for run, result in results]
    return Comparison(pd.DataFrame([r for group in rows for r in group], columns=COLUMNS), test_sets)


def describe_test_sets(comparison: Comparison) -> str:
    """One sentence on whether the runs share their test images."""
    if comparison.same_test_set:
        (fingerprint,) = comparison.test_sets
        return f"all runs were tested on the same images (fingerprint {fingerprint[:8]})"
    return (
        f"NOT COMPARABLE: the runs were tested on {len(comparison.test_sets)} different image sets "
        f"({_describe(comparison.test_sets)}); compare them on one dataset with evaluate --data"
    )


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """The table as GitHub Markdown, numbers with `digits` decimals (seed 000's layout)."""
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    for row in df.itertuples(index=False):
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV atomically."""
    atomic_write_text(path, df.to_csv(index=False))
    return Path(path)


def _rows(run: RunDir, result: dict, fingerprint: str) -> list[list]:
    """The table rows of one run: one per class."""
    d, report = result["dataset"], result["metrics"]["report"]
    ci = (result.get("intervals") or {}).get("values", {}).get("accuracy") or {}
    accuracy_ci = f"{ci['lower']:.2f}-{ci['upper']:.2f}" if ci.get("lower") is not None else "-"
    return [
        [
            run.name,
            result["model"]["arch"],
            d["name"],
            int(d["n_evaluated"]),
            fingerprint[:8],
            name,
            report[name]["precision"],
            report[name]["recall"],
            report[name]["f1"],
            report["accuracy"],
            accuracy_ci,
        ]
        for name in result["metrics"]["classes"]
        if name in report
    ]


def _fingerprint(result: dict) -> str:
    """The evaluated image list's fingerprint (older metrics.json without one: dataset and size)."""
    d = result["dataset"]
    return d.get("fingerprint") or f"unknown-{d['name']}-{d['n_evaluated']}"


def _describe(test_sets: dict[str, list[str]]) -> str:
    """'abcd1234: run1, run2; ef567890: run3'."""
    return "; ".join(f"{fp[:8]}: {', '.join(runs)}" for fp, runs in test_sets.items())


def _read(run: RunDir, dataset: str) -> tuple[RunDir, dict]:
    """(run folder, its metrics.json on `dataset`); DataError saying how to produce a missing one."""
    path = run.evaluation(dataset) / METRICS_JSON
    if not path.is_file():
        how = f"covid-cxr evaluate {run.root}" + ("" if dataset == TEST else " --data DATASET")
        raise DataError(f"{path}: missing; evaluate the run first ({how})")
    try:
        return run, json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
