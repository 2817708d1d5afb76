"""Compare evaluated runs in seed 000's table: Category, Model, Precision, Recall, F1, Accuracy."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covid_cxr.errors import DataError
from covid_cxr.evaluation.evaluate import METRICS_JSON
from covid_cxr.io import atomic_write_text

COLUMNS = ["Category", "Model", "Precision", "Recall", "F1", "Accuracy"]


def compare_runs(run_dirs: Sequence[str | Path], evaluation: str = "evaluation") -> pd.DataFrame:
    """One row per run and class from each run's `evaluation`/metrics.json (write it with evaluate_run first).

    Model is the run's architecture, followed by the run folder name when two runs share one.
    """
    if not run_dirs:
        raise DataError("compare needs at least one run folder")
    results = [_read(Path(run), evaluation) for run in run_dirs]
    archs = Counter(r["model"]["arch"] for _, r in results)
    rows = []
    for run, result in results:
        arch = result["model"]["arch"]
        model = arch if archs[arch] == 1 else f"{arch} ({run.name})"
        report = result["metrics"]["report"]
        for name in result["metrics"]["classes"]:
            cls = report[name]
            rows.append([name, model, cls["precision"], cls["recall"], cls["f1"], report["accuracy"]])
    return pd.DataFrame(rows, columns=COLUMNS)


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


def _read(run: Path, evaluation: str) -> tuple[Path, dict]:
    """(run folder, its metrics.json); DataError saying how to produce a missing one."""
    path = run / evaluation / METRICS_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; evaluate the run first (covid-cxr evaluate {run})")
    try:
        return run, json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
