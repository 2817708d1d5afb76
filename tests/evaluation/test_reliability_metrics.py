"""Reliability in evaluate: metrics.json agrees with predictions.csv, old bundles, the report's rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from covid_cxr.bundle import load_bundle
from covid_cxr.bundle_info import OOD_NPZ, read_bundle_info, write_bundle_info
from covid_cxr.cli import app
from covid_cxr.evaluation.evaluate import evaluate_run
from covid_cxr.evaluation.intervals import wilson
from covid_cxr.evaluation.reliability import summarise
from covid_cxr.reliability.assess import Reliability
from covid_cxr.reliability.conformal import prediction_sets
from covid_cxr.reliability.features import image_features
from covid_cxr.reliability.gate import REASONS
from covid_cxr.report.build import build_report
from covid_cxr.report.format import with_ci

FAST = {"bootstrap": 0, "shortcut_checks": False, "explanation_images": 0, "gallery_per_class": 0}


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    """A copy of the tiny run (OOD detector and conformal sets fitted after training) on its test split."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("rel") / "run"))
    result = evaluate_run(run, **FAST)
    csv = pd.read_csv(run / "evaluation" / "predictions.csv", keep_default_na=False)
    return run, result, csv


def _sets(csv: pd.DataFrame) -> list[list[str]]:
    return [s.split("|") if s else [] for s in csv["prediction_set"]]


def test_conformal_figures_are_those_of_the_prediction_sets_in_the_csv(
    evaluated: tuple[Path, dict, pd.DataFrame],
) -> None:
    run, result, csv = evaluated
    rel = json.loads((run / "evaluation" / "metrics.json").read_text())["reliability"]
    assert rel == json.loads(json.dumps(result["reliability"]))
    assert rel["available"] is True and rel["note"] is None
    conformal, info = rel["conformal"], read_bundle_info(run / "bundle")
    assert (conformal["method"], conformal["target_coverage"]) == (info.conformal.method, 0.9)
    sets = _sets(csv)
    sizes = np.array([len(s) for s in sets])
    covered = sum(t in s for t, s in zip(csv["true_class"], sets, strict=True))
    assert conformal["n"] == len(csv) == result["dataset"]["n_evaluated"]
    assert conformal["covered"] == covered
    assert conformal["coverage"] == pytest.approx(wilson(covered, len(csv)))
    assert conformal["coverage"]["lower"] <= covered / len(csv) <= conformal["coverage"]["upper"]
    assert conformal["mean_set_size"] == pytest.approx(sizes.mean())
    assert conformal["singleton_share"] == pytest.approx((sizes == 1).mean())
    assert conformal["empty_share"] == pytest.approx((sizes == 0).mean())


def test_sets_are_those_of_the_bundles_qhat_on_the_csv_probabilities(
    evaluated: tuple[Path, dict, pd.DataFrame],
) -> None:
    run, _, csv = evaluated
    info = read_bundle_info(run / "bundle")
    probs = csv[[f"p_{c}" for c in info.class_names]].to_numpy()
    member = prediction_sets(probs, info.conformal.qhat, info.conformal.method)
    assert _sets(csv) == [
        [c for c, keep in zip(info.class_names, row, strict=True) if keep] for row in member
    ]


def test_ood_scores_are_those_of_the_pooled_features_the_detector_was_fitted_on(
    evaluated: tuple[Path, dict, pd.DataFrame],
) -> None:
    run, result, csv = evaluated
    predictor = load_bundle(run / "bundle", backend="torch")
    info = predictor.bundle_info
    assert info.head.hidden, "the test needs a hidden layer: pooled and penultimate features then differ"
    rows, features, _ = image_features(predictor.model, csv["path"].tolist(), info.preprocess)
    scores = Reliability.from_bundle(run / "bundle", info).detector.score(features)
    assert rows == list(range(len(csv)))
    np.testing.assert_allclose(csv["ood_score"].to_numpy(float), scores, rtol=1e-5)
    ood = result["reliability"]["ood"]
    flagged = csv["ood_flagged"].to_numpy(bool)
    np.testing.assert_array_equal(flagged, scores > info.ood.threshold)
    assert (ood["n"], ood["flagged"], ood["threshold"]) == (len(csv), flagged.sum(), info.ood.threshold)
    assert ood["rate"] == pytest.approx(wilson(int(flagged.sum()), len(csv)))
    assert sum(v["n"] for v in ood["per_label"].values()) == len(csv)


def test_gate_and_abstain_rates_are_counted_from_the_csv(evaluated: tuple[Path, dict, pd.DataFrame]) -> None:
    _, result, csv = evaluated
    rel = result["reliability"]
    gate = [g.split("|") if g else [] for g in csv["gate"]]
    assert rel["gate"]["unavailable"] == []  # the frontal-chest check ran on every image
    assert rel["gate"]["passed"] == sum(not g for g in gate)
    assert {r: v["count"] for r, v in rel["gate"]["reasons"].items()} == {
        r: sum(r in g for g in gate) for r in REASONS
    }
    sizes = np.array([len(s) for s in _sets(csv)])
    expected = csv["ood_flagged"].to_numpy(bool) | np.array([bool(g) for g in gate]) | (sizes != 1)
    abstain = csv["abstain"].to_numpy(bool)
    np.testing.assert_array_equal(abstain, expected)
    assert rel["abstain"]["abstained"] == abstain.sum()
    assert rel["abstain"]["rate"] == pytest.approx(wilson(int(abstain.sum()), len(csv)))
    assert rel["abstain"]["reasons"].get("ambiguous_set", 0) == int((sizes > 1).sum())


def test_a_bundle_without_detector_or_sets_says_so_and_the_report_renders(
    evaluated: tuple[Path, dict, pd.DataFrame], tmp_path: Path
) -> None:
    run = Path(shutil.copytree(evaluated[0], tmp_path / "old"))
    info = read_bundle_info(run / "bundle")
    files = {k: v for k, v in info.files.items() if k != OOD_NPZ}
    write_bundle_info(
        run / "bundle", info.model_copy(update={"ood": None, "conformal": None, "files": files})
    )
    (run / "bundle" / OOD_NPZ).unlink()
    few = tmp_path / "few.csv"  # six of the test phantoms as an external dataset: quick
    evaluated[2][["path", "label"]].groupby("label").head(2).to_csv(few, index=False)
    args = ["evaluate", str(run), "--data", str(few), "--bootstrap", "0", "--no-shortcut-checks"]
    out = CliRunner().invoke(app, [*args, "--no-frontal-check", "--no-report"], env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert "reliability: the input gate stopped 0 of 6 (0%), not_frontal_chest not checked" in out.output
    rel = json.loads((run / "evaluation-few" / "metrics.json").read_text())["reliability"]
    note = "not available (bundle has no OOD detector / conformal sets; run covid-cxr reliability RUN)"
    assert (rel["available"], rel["note"], rel["conformal"], rel["ood"]) == (False, note, None, None)
    assert rel["gate"]["n"] == rel["abstain"]["n"] == 6
    assert rel["gate"]["unavailable"] == ["not_frontal_chest"]  # skipped: the phantoms have lung masks
    csv = pd.read_csv(run / "evaluation-few" / "predictions.csv", keep_default_na=False)
    assert set(csv["prediction_set"]) == {""} and set(csv["ood_score"]) == {""}
    html = build_report(run).read_text(encoding="utf-8")
    assert "external: few: the input gate stopped" in html
    assert "Not available (bundle has no OOD detector / conformal sets" in html
    assert "<td>not available</td>" in html
    metrics = run / "evaluation-few" / "metrics.json"  # as evaluate wrote it before it measured reliability
    old = json.loads(metrics.read_text())
    del old["reliability"]
    metrics.write_text(json.dumps(old))
    html = build_report(run).read_text(encoding="utf-8")
    assert "<td>not measured</td>" in html and "external: few: reliability not measured" in html


def test_a_bundle_that_lost_only_its_sets_names_what_is_missing(
    evaluated: tuple[Path, dict, pd.DataFrame],
) -> None:
    info = read_bundle_info(evaluated[0] / "bundle").model_copy(update={"conformal": None})
    gate = {"reasons": [], "unavailable": []}
    one = {"prediction_set": None, "ood": {"flagged": False}, "gate": gate, "abstain": False}
    assessed = [{**one, "abstain_reasons": []}] * 2
    rel = summarise(info, assessed, np.array(["covid", "other"]), np.array([0, -1]))
    assert rel["note"] == "not available (bundle has no conformal sets; run covid-cxr reliability RUN)"
    assert rel["conformal"] is None and rel["ood"]["per_label"]["other"]["model_class"] is False


@pytest.mark.shared_data
def test_the_report_shows_an_external_datasets_ood_flag_rate(
    evaluated: tuple[Path, dict, pd.DataFrame], shared_data: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(evaluated[0], tmp_path / "run"))
    radiography = shared_data / "radiography-224"
    rows = [
        {"path": str(p), "label": folder}
        for folder in ("COVID", "Normal", "Viral Pneumonia")
        for p in sorted((radiography / folder).iterdir())[:2]
    ]
    bacterial = sorted((shared_data / "kermany-224" / "test" / "PNEUMONIA").glob("*_bacteria_*"))[:2]
    rows += [{"path": str(p), "label": "bacterial"} for p in bacterial]
    pd.DataFrame(rows).to_csv(tmp_path / "real.csv", index=False)
    result = evaluate_run(run, tmp_path / "real.csv", **FAST)
    ood = result["reliability"]["ood"]
    assert ood["n"] == 8 and result["reliability"]["conformal"]["n"] == 6  # bacterial: not a model class
    bacterial_flags = ood["per_label"]["bacterial"]
    assert (bacterial_flags["n"], bacterial_flags["model_class"]) == (2, False)
    html = build_report(run).read_text(encoding="utf-8")
    assert f"<td>{with_ci(ood['rate']['point'], ood['rate'])} of 8</td>" in html
    assert f"the Mahalanobis OOD score flagged {ood['flagged']} of 8" in html
    assert f"bacterial (not a model class) {bacterial_flags['flagged']} of 2" in html
