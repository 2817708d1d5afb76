"""compare_runs: seed 000's table with run name, dataset, n, test-set fingerprint and intervals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from covid_cxr.cli import app
from covid_cxr.errors import DataError
from covid_cxr.evaluation.compare import COLUMNS, compare_runs, describe_test_sets, to_csv, to_markdown
from covid_cxr.evaluation.evaluate import evaluate_run


def _fake_run(
    root: Path, name: str, arch: str, recalls: dict[str, float], accuracy: float, fingerprint: str = "f" * 64
) -> Path:
    """A run folder holding only evaluation/metrics.json with a report."""
    report = {
        c: {"precision": 0.5, "recall": r, "f1": 2 * 0.5 * r / (0.5 + r), "support": 10}
        for c, r in recalls.items()
    }
    report["accuracy"] = accuracy
    metrics = {
        "model": {"arch": arch},
        "dataset": {"name": "test", "n_evaluated": 10 * len(recalls), "fingerprint": fingerprint},
        "metrics": {"classes": list(recalls), "report": report},
        "intervals": {"values": {"accuracy": {"point": accuracy, "lower": accuracy - 0.1, "upper": 1.0}}},
    }
    (root / name / "evaluation").mkdir(parents=True)
    (root / name / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    return root / name


def test_table_has_one_row_per_run_and_class(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path, "a", "vgg16", {"Covid-19": 1.0, "Normal": 0.92}, 0.97),
        _fake_run(tmp_path, "b", "resnet50", {"Covid-19": 0.92, "Normal": 0.69}, 0.85),
    ]
    comparison = compare_runs(runs)
    df = comparison.table
    assert list(df.columns) == COLUMNS
    assert df[["Run", "Model", "Category"]].values.tolist() == [
        ["a", "vgg16", "Covid-19"],
        ["a", "vgg16", "Normal"],
        ["b", "resnet50", "Covid-19"],
        ["b", "resnet50", "Normal"],
    ]
    assert df["n"].tolist() == [20, 20, 20, 20]
    assert df["Recall"].tolist() == [1.0, 0.92, 0.92, 0.69]
    assert df["Accuracy 95% CI"].tolist() == ["0.87-1.00", "0.87-1.00", "0.75-1.00", "0.75-1.00"]
    assert comparison.same_test_set
    assert describe_test_sets(comparison).startswith("all runs were tested on the same images")


def test_runs_tested_on_different_images_are_marked_or_refused(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path, "a", "vgg16", {"Covid-19": 1.0, "Normal": 0.92}, 0.97, fingerprint="a" * 64),
        _fake_run(tmp_path, "b", "vgg16", {"Covid-19": 0.9, "Normal": 0.9}, 0.9, fingerprint="b" * 64),
    ]
    comparison = compare_runs(runs)
    assert not comparison.same_test_set
    assert set(comparison.table["Test set"]) == {"aaaaaaaa", "bbbbbbbb"}
    assert "NOT COMPARABLE" in describe_test_sets(comparison)
    with pytest.raises(DataError, match="2 different image sets"):
        compare_runs(runs, strict=True)
    result = CliRunner().invoke(app, ["compare", *map(str, runs)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "NOT COMPARABLE" in result.output
    assert "Traceback" not in result.output


def test_markdown_and_csv(tmp_path: Path) -> None:
    df = compare_runs([_fake_run(tmp_path, "a", "vgg16", {"Covid-19": 1.0, "Normal": 0.925}, 0.97)]).table
    lines = to_markdown(df).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert (
        lines[2] == "| a | vgg16 | test | 20 | ffffffff | Covid-19 | 0.50 | 1.00 | 0.67 | 0.97 | 0.87-1.00 |"
    )
    assert len(lines) == 4
    written = to_csv(df, tmp_path / "out" / "compare.csv")
    assert pd.read_csv(written, dtype={"Test set": str}).equals(df)


def test_a_run_without_evaluation_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="evaluate the run first"):
        compare_runs([tmp_path / "raw"])


def test_two_copies_of_one_evaluated_run_share_their_test_set(tiny_run: Path, tmp_path: Path) -> None:
    evaluate_run(tiny_run, bootstrap=0, shortcut_checks=False, gallery_per_class=0)
    other = tmp_path / "again"
    shutil.copytree(tiny_run, other)
    comparison = compare_runs([tiny_run, other])
    df = comparison.table
    assert comparison.same_test_set
    assert set(df["Run"]) == {tiny_run.name, "again"}
    result = json.loads((tiny_run / "evaluation" / "metrics.json").read_text())
    first = df[df["Run"] == tiny_run.name]
    assert first["Category"].tolist() == result["metrics"]["classes"]
    assert first["n"].tolist() == [result["dataset"]["n_evaluated"]] * len(first)
    assert first["Precision"].tolist() == [
        result["metrics"]["report"][c]["precision"] for c in first["Category"]
    ]
