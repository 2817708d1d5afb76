"""evaluate_run end to end on a tiny trained run: files, numbers agreeing with predictions, cross-source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix

from covid_cxr.bundle import load_bundle
from covid_cxr.data.manifest import load_manifest
from covid_cxr.errors import DataError
from covid_cxr.evaluation.evaluate import class_key, evaluate_run, match_classes
from covid_cxr.evaluation.intervals import METHODS

FIGURES = ["confusion_matrix.png", "confusion_matrix_normalized.png", "roc.png", "pr.png", "reliability.png"]


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path) -> tuple[Path, dict]:
    """The tiny run evaluated on its test split with 200 bootstrap resamples."""
    return tiny_run, evaluate_run(tiny_run, bootstrap=200, seed=3)


def _external(run: Path, root: Path, folders: dict[str, str]) -> Path:
    """A folder-per-class dataset from the run's test images; `folders` maps run label -> folder name."""
    manifest = load_manifest(run / "manifest.csv")
    for row in manifest[manifest["split"] == "test"].itertuples():
        if row.label in folders:
            target = root / folders[row.label]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(row.path, target / Path(row.path).name)
    return root


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("COVID-19", "covid"),
        ("covid_19", "covid"),
        ("No Finding", "normal"),
        ("NORMAL", "normal"),
        ("Viral Pneumonia", "viral"),
        ("bacteria", "bacterial"),
        ("Lung_Opacity", "lung opacity"),
    ],
)
def test_class_names_match_by_case_and_alias(spelling: str, key: str) -> None:
    assert class_key(spelling) == key


def test_match_classes_maps_labels_and_explains_a_mismatch() -> None:
    assert match_classes(["covid", "normal", "viral"], ["COVID", "Normal", "Lung_Opacity"]) == {
        "COVID": 0,
        "Normal": 1,
    }
    with pytest.raises(DataError, match=r"\['covid', 'normal', 'viral'\].*\['cats', 'dogs'\]"):
        match_classes(["covid", "normal", "viral"], ["dogs", "cats"])


def test_evaluation_folder_holds_every_file(evaluated: tuple[Path, dict]) -> None:
    run, result = evaluated
    folder = run / "evaluation"
    assert Path(result["output_dir"]) == folder
    assert json.loads((folder / "metrics.json").read_text()) == result
    for name in FIGURES:
        with Image.open(folder / name) as png:
            assert png.format == "PNG" and png.width > 300
    assert not list(folder.glob(".*"))  # no temporary files left


def test_metrics_agree_with_the_predictions_and_the_bundle(evaluated: tuple[Path, dict]) -> None:
    run, result = evaluated
    preds = pd.read_csv(run / "evaluation" / "predictions.csv")
    manifest = load_manifest(run / "manifest.csv")
    assert sorted(preds["path"]) == sorted(manifest.loc[manifest["split"] == "test", "path"])
    classes = result["metrics"]["classes"]
    y = preds["true_class"].map(classes.index).to_numpy()
    pred = preds["predicted"].map(classes.index).to_numpy()
    assert (
        result["metrics"]["confusion_matrix"]["counts"]
        == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    )
    assert result["metrics"]["headline"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
    # the bundle serves the same calibrated probabilities via ONNX
    predictor = load_bundle(run / "bundle")
    assert predictor.backend == "onnx"
    assert predictor.info["temperature"] == pytest.approx(result["temperature"]["value"])
    probs = predictor.predict_proba(preds["path"].tolist())
    assert probs == pytest.approx(preds[[f"p_{c}" for c in classes]].to_numpy(), abs=1e-4)


def test_evaluate_never_changes_the_bundle(tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    images = load_manifest(run / "manifest.csv")["path"].tolist()[:12]
    before = load_bundle(run / "bundle").predict_proba(images)
    files = {p.name: p.read_bytes() for p in (run / "bundle").iterdir()}
    result = evaluate_run(run, bootstrap=0, shortcut_checks=False, gallery_per_class=0)
    assert {p.name: p.read_bytes() for p in (run / "bundle").iterdir()} == files
    assert load_bundle(run / "bundle").predict_proba(images) == pytest.approx(before, abs=1e-7)
    assert result["temperature"]["value"] == load_bundle(run / "bundle").info["temperature"]


def test_the_calibration_record_of_the_bundle_is_reported(evaluated: tuple[Path, dict]) -> None:
    run, result = evaluated
    manifest = load_manifest(run / "manifest.csv")
    record = result["temperature"]["calibration"]
    assert record["n_val"] == (manifest["split"] == "val").sum()
    assert record == load_bundle(run / "bundle").info["calibration"]
    calibration = result["calibration"]
    assert calibration["temperature"] == result["temperature"]["value"]
    assert sum(b["count"] for b in calibration["reliability_after"]) == result["metrics"]["n"]


def test_intervals_bracket_the_point_estimates(evaluated: tuple[Path, dict]) -> None:
    _, result = evaluated
    values = result["intervals"]["values"]
    assert values["accuracy"]["point"] == pytest.approx(result["metrics"]["headline"]["accuracy"])
    assert values["macro_f1"]["point"] == pytest.approx(result["metrics"]["headline"]["macro_f1"])
    for name in ("accuracy", "macro_f1", "macro_auc", "sensitivity[covid]", "specificity[viral]"):
        assert values[name]["lower"] <= values[name]["point"] <= values[name]["upper"], name
    assert result["intervals"]["n_resamples"] == 200
    assert all(v["upper"] > v["lower"] and v["method"] in METHODS for v in values.values())


def test_cross_source_evaluation_matches_aliases_and_counts_what_it_leaves_out(
    evaluated: tuple[Path, dict], tmp_path: Path
) -> None:
    run, _ = evaluated
    data = _external(
        run, tmp_path / "other set", {"covid": "COVID-19", "normal": "No finding", "viral": "Lung_Opacity"}
    )
    (data / "COVID-19" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = evaluate_run(run, data, bootstrap=0, shortcut_checks=False)
    folder = run / "evaluation-other-set"
    assert (folder / "metrics.json").is_file() and (folder / "roc.png").is_file()
    dataset = result["dataset"]
    assert dataset["class_matching"] == {"COVID-19": "covid", "No finding": "normal"}
    assert dataset["excluded"] == {"Lung_Opacity": len(list((data / "Lung_Opacity").iterdir()))}
    assert [u["path"] for u in dataset["unreadable"]] == [str(data / "COVID-19" / "broken.png")]
    n_matched = len(list((data / "COVID-19").iterdir())) + len(list((data / "No finding").iterdir())) - 1
    assert dataset["n_evaluated"] == result["metrics"]["n"] == n_matched
    assert result["metrics"]["roc"]["viral"] is None and result["shortcuts"] is None
    assert result["intervals"] == {}


def test_unmatched_classes_raise_a_clear_error(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = evaluated
    data = _external(run, tmp_path / "pets", {"covid": "cats", "normal": "dogs"})
    with pytest.raises(DataError, match="cats"):
        evaluate_run(run, data, bootstrap=0)


def test_a_run_without_test_split_needs_data(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = evaluated
    copy = tmp_path / "no-test"
    shutil.copytree(run, copy)
    manifest = pd.read_csv(copy / "manifest.csv")
    manifest.loc[manifest["split"] == "test", "split"] = "train"
    manifest.to_csv(copy / "manifest.csv", index=False)
    with pytest.raises(DataError, match="no test split"):
        evaluate_run(copy, bootstrap=0)


def test_real_images_use_predicted_lung_masks(
    evaluated: tuple[Path, dict], shared_data: Path, tmp_path: Path
) -> None:
    run, _ = evaluated
    root = shared_data / "radiography-224"
    rows = [
        {"path": str(path), "label": folder}
        for folder in ("COVID", "Normal", "Viral Pneumonia")
        for path in sorted((root / folder).iterdir())[:4]
    ]
    csv = tmp_path / "radiography-sample.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    result = evaluate_run(run, csv, bootstrap=0)
    assert result["dataset"]["class_matching"] == {
        "COVID": "covid",
        "Normal": "normal",
        "Viral Pneumonia": "viral",
    }
    assert result["metrics"]["n"] == 12
    assert result["shortcuts"]["lungs_hidden"]["lung_masks"] == {
        "manifest": 0,
        "fixed_ellipses": 0,
        "predicted": 12,
    }
    assert result["cam_in_lungs"]["lung_masks"] == {"manifest": 0, "predicted": 12}
    assert np.isfinite(result["calibration"]["ece_after"])
    assert (run / "evaluation-radiography-sample" / "metrics.json").is_file()


def test_metrics_per_source_when_the_data_has_several(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = evaluated
    manifest = load_manifest(run / "manifest.csv")
    test = manifest.loc[manifest["split"] == "test", ["path", "label"]].reset_index(drop=True)
    test["source"] = np.where(np.arange(len(test)) % 3 == 0, "site-a", "site-b")
    test.to_csv(tmp_path / "two-sites.csv", index=False)
    result = evaluate_run(run, tmp_path / "two-sites.csv", bootstrap=0, shortcut_checks=False)
    per_source = result["per_source"]
    assert sorted(per_source) == ["site-a", "site-b"]
    assert per_source["site-a"]["n"] == (test["source"] == "site-a").sum()
    preds = pd.read_csv(run / "evaluation-two-sites" / "predictions.csv")
    site_b = preds[preds["source"] == "site-b"]
    assert per_source["site-b"]["accuracy"] == pytest.approx(
        (site_b["predicted"] == site_b["true_class"]).mean()
    )


def test_explanation_quality_is_scored_on_phantom_lesion_masks(evaluated: tuple[Path, dict]) -> None:
    run, result = evaluated
    scores = result["explanations"]
    test = pd.read_csv(run / "manifest.csv").query("split == 'test'")
    assert scores["images"] == min(24, len(test))
    assert np.isfinite(scores["faithfulness_road"])
    lesion = scores["lesion"]
    with_lesion = test.sample(n=scores["images"], random_state=3)["label"].ne("normal").sum()
    assert lesion["images"] == with_lesion and lesion["skipped_empty_masks"] == scores["images"] - with_lesion
    assert 0.0 <= lesion["energy_in_mask"] <= 1.0 and 0.0 < lesion["lesion_share"] < 1.0
    assert lesion["energy_ratio"] == pytest.approx(lesion["energy_in_mask"] / lesion["lesion_share"])
