"""compare_runs: seed 000's table from the runs' metrics.json, as Markdown and CSV."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from covid_cxr.errors import DataError
from covid_cxr.evaluation.compare import COLUMNS, compare_runs, to_csv, to_markdown
from covid_cxr.evaluation.evaluate import evaluate_run


def _fake_run(root: Path, name: str, arch: str, recalls: dict[str, float], accuracy: float) -> Path:
    """A run folder holding only evaluation/metrics.json with a report."""
    report = {
        c: {"precision": 0.5, "recall": r, "f1": 2 * 0.5 * r / (0.5 + r), "support": 10}
        for c, r in recalls.items()
    }
    report["accuracy"] = accuracy
    metrics = {"model": {"arch": arch}, "metrics": {"classes": list(recalls), "report": report}}
    (root / name / "evaluation").mkdir(parents=True)
    (root / name / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    return root / name


def test_table_has_one_row_per_run_and_class(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path, "a", "vgg16", {"Covid-19": 1.0, "Normal": 0.92}, 0.97),
        _fake_run(tmp_path, "b", "resnet50", {"Covid-19": 0.92, "Normal": 0.69}, 0.85),
    ]
    df = compare_runs(runs)
    assert list(df.columns) == COLUMNS
    assert df[["Category", "Model"]].values.tolist() == [
        ["Covid-19", "vgg16"],
        ["Normal", "vgg16"],
        ["Covid-19", "resnet50"],
        ["Normal", "resnet50"],
    ]
    assert df["Recall"].tolist() == [1.0, 0.92, 0.92, 0.69]
    assert df["Accuracy"].tolist() == [0.97, 0.97, 0.85, 0.85]
    assert df["F1"].iloc[1] == pytest.approx(2 * 0.5 * 0.92 / 1.42)


def test_markdown_and_csv(tmp_path: Path) -> None:
    df = compare_runs([_fake_run(tmp_path, "a", "vgg16", {"Covid-19": 1.0, "Normal": 0.925}, 0.97)])
    lines = to_markdown(df).splitlines()
    assert lines[0] == "| Category | Model | Precision | Recall | F1 | Accuracy |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| Covid-19 | vgg16 | 0.50 | 1.00 | 0.67 | 0.97 |"
    assert len(lines) == 4
    written = to_csv(df, tmp_path / "out" / "compare.csv")
    assert pd.read_csv(written).equals(df)


def test_a_run_without_evaluation_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="evaluate the run first"):
        compare_runs([tmp_path / "raw"])


def test_two_evaluated_runs_of_one_architecture_are_told_apart(tiny_run: Path, tmp_path: Path) -> None:
    evaluate_run(tiny_run, bootstrap=0, shortcut_checks=False)
    other = tmp_path / "again"
    shutil.copytree(tiny_run, other)
    df = compare_runs([tiny_run, other])
    assert set(df["Model"]) == {f"convnet ({tiny_run.name})", "convnet (again)"}
    result = json.loads((tiny_run / "evaluation" / "metrics.json").read_text())
    first = df[df["Model"] == f"convnet ({tiny_run.name})"]
    assert first["Category"].tolist() == result["metrics"]["classes"]
    assert first["Precision"].tolist() == [
        result["metrics"]["report"][c]["precision"] for c in first["Category"]
    ]
