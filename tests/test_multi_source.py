"""Several sources in one run on slices of ../shared/data: merged manifest, holdout source, class mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from covid_cxr.bundle import load_bundle
from covid_cxr.cli import app
from covid_cxr.config import SourceConfig
from covid_cxr.data.manifest import load_manifest
from covid_cxr.data.splits import assert_no_leakage
from covid_cxr.training.presets import load_config
from covid_cxr.training.train import prepare_manifest

PER_FOLDER = 6
KERMANY_MAP = ["--map", "NORMAL=Normal", "--map", "viral=Viral Pneumonia"]


def _slice(source: Path, target: Path, per_folder: int) -> Path:
    """Links to the first `per_folder` files of every leaf folder (Kermany: viral and bacterial alike)."""
    for folder in sorted(
        p for p in source.rglob("*") if p.is_dir() and not any(c.is_dir() for c in p.iterdir())
    ):
        out = target / folder.relative_to(source)
        out.mkdir(parents=True)
        files = sorted(folder.iterdir())
        picked = files[:per_folder]
        if folder.name == "PNEUMONIA":  # half viral, half bacterial
            picked = [f for f in files if "virus" in f.name][: per_folder // 2]
            picked += [f for f in files if "bacteria" in f.name][: per_folder - len(picked)]
        for image in picked:
            (out / image.name).symlink_to(image)
    return target


@pytest.fixture(scope="module")
def slices(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """radiography-224 and kermany-224 slices; one radiography Normal image is also in kermany's train."""
    root = tmp_path_factory.mktemp("sources")
    radiography = _slice(shared_data / "radiography-224", root / "radiography-224", PER_FOLDER)
    kermany = _slice(shared_data / "kermany-224", root / "kermany-224", PER_FOLDER)
    shared = sorted((radiography / "Normal").iterdir())[0]
    (kermany / "train" / "NORMAL" / "copy_of_normal.png").symlink_to(shared.resolve())
    return radiography, kermany


def _cfg(radiography: Path, kermany: Path, **data):
    cfg = load_config("demo", None, ["preprocess.size=64", "train.epochs=2", "train.accelerator=cpu"])
    sources = [
        SourceConfig(path=str(radiography)),
        SourceConfig(
            path=str(kermany),
            options={"pneumonia_types": True},
            map={"NORMAL": "Normal", "viral": "Viral Pneumonia", "bacterial": "-"},
        ),
    ]
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": sources, **data})})


@pytest.mark.shared_data
def test_the_merged_manifest_counts_every_source_and_class_and_keeps_duplicates_together(
    slices: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest = prepare_manifest(_cfg(*slices), None, tmp_path)
    counts = manifest.groupby(["source", "label"]).size().to_dict()
    assert counts == {
        ("kermany-224", "Normal"): 2 * PER_FOLDER + 1,
        ("kermany-224", "Viral Pneumonia"): PER_FOLDER,  # 3 viral per PNEUMONIA folder; bacterial dropped
        ("radiography-224", "COVID"): PER_FOLDER,
        ("radiography-224", "Normal"): PER_FOLDER,
        ("radiography-224", "Viral Pneumonia"): PER_FOLDER,
    }
    assert manifest["patient_id"].dropna().str.match(r"^(kermany-224|radiography-224):").all()
    assert_no_leakage(manifest)
    pair = manifest[manifest["sha256"].duplicated(keep=False)]
    assert len(pair) >= 2 and pair.groupby("sha256")["split"].nunique().eq(1).all()
    assert set(manifest["split"]) == {"train", "val", "test"}


@pytest.mark.shared_data
def test_holdout_source_is_exactly_the_test_split(slices: tuple[Path, Path], tmp_path: Path) -> None:
    manifest = prepare_manifest(_cfg(*slices, holdout_source="kermany-224"), None, tmp_path)
    test = manifest[manifest["split"] == "test"]
    assert set(test["source"]) == {"kermany-224"}
    assert len(test) == (manifest["source"] == "kermany-224").sum() == 2 * PER_FOLDER + 1 + PER_FOLDER
    trained = manifest[manifest["split"] != "test"]
    assert not set(trained["sha256"]) & set(test["sha256"])  # the radiography copy of a test image is gone
    assert len(trained) == 3 * PER_FOLDER - 1


@pytest.mark.slow
@pytest.mark.shared_data
def test_train_on_two_sources_then_evaluate_with_a_class_the_model_lacks(
    slices: tuple[Path, Path], tmp_path: Path
) -> None:
    radiography, kermany = slices
    run = tmp_path / "runs" / "both"
    args = ["train", "--preset", "demo", "--data", str(radiography), "--data", str(kermany)]
    args += ["-o", "pneumonia_types=true", *KERMANY_MAP, "--map", "bacterial=-", "--out", str(run)]
    args += ["--set", "preprocess.size=64", "--set", "train.epochs=2", "--set", "train.accelerator=cpu"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert [s["path"] for s in config["data"]["sources"]] == [
        str(radiography.resolve()),
        str(kermany.resolve()),
    ]
    assert config["data"]["sources"][0]["options"] == {} and config["data"]["sources"][0]["map"] == {}
    assert config["data"]["sources"][1]["map"]["bacterial"] == "-"
    info = load_bundle(run / "bundle").bundle_info
    assert [d["name"] for d in info.training_data] == ["radiography-224", "kermany-224"]
    manifest = load_manifest(run / "manifest.csv")
    assert "bacterial" not in set(manifest["label"]) and set(manifest["source"]) == {
        "radiography-224",
        "kermany-224",
    }

    external = tmp_path / "kermany-test"
    (external / "test").mkdir(parents=True)
    for folder in ("NORMAL", "PNEUMONIA"):
        (external / "test" / folder).symlink_to((kermany / "test" / folder).resolve())
    out = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(run),
            "--data",
            str(external),
            "-o",
            "pneumonia_types=true",
            "--map",
            "NORMAL=Normal",
        ]
        + ["--bootstrap", "50", "--no-report"],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "not a model class" in out.output
    metrics = json.loads((run / "evaluation-kermany-test" / "metrics.json").read_text())
    fc = metrics["false_covid"]
    images = sorted(str(p) for f in ("NORMAL", "PNEUMONIA") for p in (external / "test" / f).iterdir())
    assert fc["n_non_covid"] == len(images) == PER_FOLDER * 2  # every image, bacterial ones too
    assert fc["n_outside_model_classes"] == fc["per_label"]["bacterial"]["n"] == PER_FOLDER // 2
    predicted = [p.label for p in load_bundle(run / "bundle").predict_files(images)[0]]
    assert fc["called_covid"] == sum(p == "COVID" for p in predicted)
    assert metrics["dataset"]["class_handling"]["bacterial"].startswith(
        f"{PER_FOLDER // 2} images, not a model"
    )
    assert metrics["source_predictability"]["verdict"].startswith("SKIP: one source")
    report = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": "200"})
    assert report.exit_code == 0, report.output
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="generalisation">') : html.index('<section id="model_card">')]
    assert "Will this hold at another hospital?" in section and "external: kermany-test" in section
    assert f"of {fc['n_non_covid']}</td>" in section and "Verdict:" in section
    assert "Source predictability (from the trained model" in html  # beside the acquisition cues


def test_reader_options_and_maps_follow_their_data() -> None:
    from typer.main import get_command

    from covid_cxr.cli import _ORDER, per_source

    args = ["runs/x", "--map", "a=b", "--data", "A", "-r", "folder", "--data", "B"]
    args += ["-o", "pneumonia_types=true", "--map", "bacterial=-"]
    ctx = get_command(app).commands["evaluate"].make_context("evaluate", args)
    token = _ORDER.set(ctx.meta["option_order"])
    try:
        p = ctx.params
        sources = per_source(p["data"], p["reader"], p["option"], p["class_map"])
    finally:
        _ORDER.reset(token)
    assert [(str(s["path"]), s["reader"], s["option"], s["class_map"]) for s in sources] == [
        ("A", "folder", {}, {"a": "b"}),
        ("B", "auto", {"pneumonia_types": True}, {"a": "b", "bacterial": "-"}),
    ]


@pytest.mark.shared_data
def test_data_check_applies_the_class_map(slices: tuple[Path, Path]) -> None:
    radiography, _ = slices
    args = [
        "data",
        "check",
        str(radiography),
        "--map",
        "Viral Pneumonia=-",
        "--map",
        "Normal=healthy",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert sorted(c["label"] for c in report["classes"]) == ["COVID", "healthy"]
    assert report["n_images"] == 2 * PER_FOLDER
