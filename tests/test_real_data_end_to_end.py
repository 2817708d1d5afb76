"""The main path on real radiographs through the CLI: train, evaluate, evaluate elsewhere, report, compare.

A slice of ../shared/data (links to 20 radiography-224 images per class, 12 kermany-224 images per
folder) keeps it to about a minute; it skips when ../shared is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covid_cxr.bundle import load_bundle
from covid_cxr.cli import app
from covid_cxr.data.manifest import load_manifest

PER_CLASS = 20
ENV = {"COLUMNS": "200"}


def _slice(source: Path, target: Path, per_folder: int) -> Path:
    """Symbolic links to the first `per_folder` files of every leaf folder, keeping the layout and names."""
    for folder in sorted(
        p for p in source.rglob("*") if p.is_dir() and not any(c.is_dir() for c in p.iterdir())
    ):
        out = target / folder.relative_to(source)
        out.mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_folder]:
            (out / image.name).symlink_to(image)
    return target


def _run(*args: str) -> str:
    """Invoke the CLI; the output, after checking it exited 0 without a traceback."""
    result = CliRunner().invoke(app, list(args), env=ENV)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def real_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset at 64 px, 3 epochs, on 20 images per radiography-224 class, evaluated twice."""
    root = tmp_path_factory.mktemp("real")
    data = _slice(shared_data / "radiography-224", root / "radiography", PER_CLASS)
    kermany = _slice(shared_data / "kermany-224", root / "kermany-224", 12)
    run = root / "runs" / "r1"
    settings = ["--set", "preprocess.size=64", "--set", "train.epochs=3", "--set", "train.accelerator=cpu"]
    _run("train", "--preset", "demo", "--data", str(data), "--out", str(run), *settings)
    _run("evaluate", str(run), "--bootstrap", "100", "--no-report")
    _run("evaluate", str(run), "--data", str(kermany), "-o", "pneumonia_types=true", "--bootstrap", "100")
    return run


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_run_is_named_after_its_folder_and_records_its_data(real_run: Path, tmp_path: Path) -> None:
    config = (real_run / "config.yaml").read_text()
    assert re.search(r"^name: r1$", config, re.MULTILINE)
    assert f"source: {(real_run.parent.parent / 'radiography').resolve()}" in config
    info = load_bundle(real_run / "bundle").bundle_info
    assert info.name == "r1" and info.training_data[0]["path"].endswith("radiography")
    assert info.calibration is not None and info.calibration.n_val > 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_report_holds_both_evaluations_and_the_flags(real_run: Path) -> None:
    html = (real_run / "report.html").read_text(encoding="utf-8")
    evaluation = html[html.index('<section id="evaluation">') :]
    assert "test split" in evaluation and "external: kermany-224" in evaluation
    assert "CAM energy in the lungs" in evaluation  # Grad-CAM's share inside the predicted lungs
    internal = json.loads((real_run / "evaluation" / "metrics.json").read_text())
    external = json.loads((real_run / "evaluation-kermany-224" / "metrics.json").read_text())
    assert external["dataset"]["class_matching"] == {"NORMAL": "Normal", "viral": "Viral Pneumonia"}
    for result in (internal, external):
        n = result["dataset"]["n_evaluated"]
        assert f"<td>{n}</td>" in evaluation
        for name, value in result["intervals"]["values"].items():
            assert value["upper"] > value["lower"], name  # never a zero-width interval on so few images
    glance = html[html.index('<dl class="glance">') : html.index("</dl>")]
    assert "test split" in glance and "kermany-224" in glance
    assert "<dt>Acquisition cues</dt><dd>FLAG Viral Pneumonia" in glance  # RGB JPEG vs grey PNG
    checks = html[html.index('<section id="checks">') : html.index('<section id="splits">')]
    assert 'badge-flag">FLAG<' in checks and "Viral Pneumonia" in checks
    if internal["shortcuts"]["flags"]:
        assert "test split: FLAG" in glance
    assert "external: kermany-224" in html[html.index('<section id="model_card">') :]


@pytest.mark.slow
@pytest.mark.shared_data
def test_training_into_the_run_again_is_refused_and_nothing_is_lost(real_run: Path) -> None:
    before = sorted(p.relative_to(real_run) for p in real_run.rglob("*"))
    data = real_run.parent.parent / "radiography"
    args = ["train", "--preset", "demo", "--data", str(data), "--out", str(real_run)]
    result = subprocess.run([sys.executable, "-m", "covid_cxr.cli", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert sorted(p.relative_to(real_run) for p in real_run.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.shared_data
def test_evaluate_leaves_predictions_unchanged_and_compare_states_the_test_set(
    real_run: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(real_run / "manifest.csv")
    images = manifest.loc[manifest["split"] == "test", "path"].tolist()[:6]
    before = load_bundle(real_run / "bundle").predict_proba(images)
    _run("evaluate", str(real_run), "--bootstrap", "0", "--no-shortcut-checks", "--no-report")
    assert load_bundle(real_run / "bundle").predict_proba(images) == pytest.approx(before, abs=1e-7)
    copy = shutil.copytree(real_run, tmp_path / "r2")
    out = _run("compare", str(real_run), str(copy))
    assert "all runs were tested on the same images" in out
    assert "r1" in out and "r2" in out
