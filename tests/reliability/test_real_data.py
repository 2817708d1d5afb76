"""What load_bundle(...).predict says about images a model should not trust, on real data (issue 13).

Two runs of the demo preset: one on 150 phantoms (the demo bundle, 128 px) and one on 100
radiography-224 images per class (64 px, 3 epochs: 192 train, 48 val, 60 test). Over 40 random splits
of that size the test split's OOD flag rate averaged 2.0 % (never above 10 %) and the 37 non-chest
images' 99.5 % (never below 97 %); 75 images per class gave the same, 50 exceeded 10 % in 15 % of
splits. Conformal coverage is checked where a finite split can show it: averaged over random
calibration/test splits of the predicted val and test probabilities (one split of 48 + 60 images has a
standard deviation of 5.8 points). About 2 minutes on two busy cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covid_cxr.bundle import load_bundle
from covid_cxr.data.synthetic import synthesize
from covid_cxr.evaluation.evaluate import labelled_split
from covid_cxr.predictor import Prediction, Predictor
from covid_cxr.reliability.conformal import coverage_and_size, fit_threshold, prediction_sets
from covid_cxr.reliability.probes import non_chest_images
from covid_cxr.run_dir import RunDir
from covid_cxr.training.presets import load_config
from covid_cxr.training.train import train_run

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

PER_CLASS = 100
CLASSES = ("COVID", "Normal", "Viral Pneumonia")
KERMANY = ("NORMAL", "PNEUMONIA")
RESPLITS = 2000


def _train(root: Path, data: Path, overrides: list[str]) -> Path:
    cfg = load_config("demo", None, ["train.accelerator=cpu", *overrides])
    train_run(cfg, data, root / "run", progress=False, cache_dir=root / "cache")
    return root / "run"


def _predictor(run: Path, frontal_check: bool = True) -> Predictor:
    """The run's bundle as the product loads it; the gate's lung check does not change sets or OOD."""
    predictor = load_bundle(run / "bundle")
    predictor.frontal_check = frontal_check
    return predictor


def _split(run: Path, split: str, classes: list[str]) -> pd.DataFrame:
    """One split of the run's manifest, the model's class index in `_y`."""
    return labelled_split(RunDir(run), classes, split).reset_index(drop=True)


def _flagged(predictions: list[Prediction]) -> float:
    return float(np.mean([p.ood["flagged"] for p in predictions]))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset (128 px, 10 epochs on cached features) on 150 phantoms: 96 train, 24 val, 30 test."""
    root = tmp_path_factory.mktemp("demo")
    synthesize(root / "phantoms", n=150, size=128, seed=0)
    return _train(root, root / "phantoms", [])


@pytest.fixture(scope="module")
def radiography_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset at 64 px, 3 epochs, on the first 100 radiography-224 images of each class."""
    root = tmp_path_factory.mktemp("radiography")
    rows = [
        {"path": str(p), "label": label}
        for label in CLASSES
        for p in sorted((shared_data / "radiography-224" / label).iterdir())[:PER_CLASS]
    ]
    pd.DataFrame(rows).to_csv(root / "slice.csv", index=False)
    return _train(root, root / "slice.csv", ["preprocess.size=64", "train.epochs=3"])


def test_the_demo_bundle_flags_real_radiographs(demo_run: Path, shared_data: Path) -> None:
    predictor = _predictor(demo_run)
    slices = {
        "radiography-224": [sorted((shared_data / "radiography-224" / c).iterdir())[-10:] for c in CLASSES],
        "kermany-224": [sorted((shared_data / "kermany-224" / "test" / c).iterdir())[:10] for c in KERMANY],
        "figure1": [sorted((shared_data / "figure1" / "images").iterdir())[::2][:20]],
    }
    for name, groups in slices.items():
        predictions, failures = predictor.predict_files([p for group in groups for p in group])
        assert not failures and len(predictions) >= 20
        assert _flagged(predictions) >= 0.95, name
        assert all("ood" in p.abstain_reasons for p in predictions if p.ood["flagged"])


def test_a_radiography_model_rarely_flags_its_own_test_split(radiography_run: Path) -> None:
    predictor = _predictor(radiography_run)
    test = _split(radiography_run, "test", predictor.classes)
    predictions = predictor.predict(test["path"].tolist())
    assert len(predictions) >= 55
    assert _flagged(predictions) <= 0.10


def test_a_radiography_model_flags_images_that_are_not_chest_radiographs(
    radiography_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("skimage")
    paths = non_chest_images(tmp_path / "non-chest")
    assert len(paths) >= 30 and {"CT_small.dcm", "MR_small.dcm", "text_page.png"} <= {p.name for p in paths}
    predictions, failures = _predictor(radiography_run).predict_files(paths)
    assert not failures
    assert _flagged(predictions) >= 0.95  # by the OOD score alone (measured: 37 of 37)
    assert np.mean([p.abstain for p in predictions]) >= 0.95
    assert np.mean([bool(p.gate["reasons"]) for p in predictions]) >= 0.9  # the gate alone: 37 of 37


def _probabilities(predictions: list[Prediction], classes: list[str]) -> np.ndarray:
    return np.array([[p.probabilities[c] for c in classes] for p in predictions])


def _val_and_test(run: Path, predictor: Predictor) -> tuple[np.ndarray, np.ndarray, int]:
    """(probabilities, labels) of val then test, and n_val, after checking q-hat and the test split's sets.

    The bundle's q-hat must be the procedure on the val split's probabilities; the test split's coverage
    (of the sets predict returns) lies within 3 standard deviations of one calibration and test split.
    """
    info = predictor.bundle_info
    classes = list(info.class_names)
    frames = {s: _split(run, s, classes) for s in ("val", "test")}
    predicted = {s: predictor.predict(f["path"].tolist()) for s, f in frames.items()}
    probs = {s: _probabilities(predicted[s], classes) for s in frames}
    y = {s: frames[s]["_y"].to_numpy() for s in frames}
    assert info.conformal is not None and info.conformal.method == "lac"
    assert fit_threshold(probs["val"], y["val"], 0.9, "lac") == pytest.approx(info.conformal.qhat, abs=1e-5)
    truth = [classes[i] for i in y["test"]]
    on_test = np.mean([t in p.prediction_set for t, p in zip(truth, predicted["test"], strict=True)])
    n_val, n_test = len(y["val"]), len(y["test"])
    assert abs(on_test - 0.9) <= 3 * math.sqrt(0.09 / n_val + 0.09 / n_test)
    return np.concatenate([probs["val"], probs["test"]]), np.concatenate([y["val"], y["test"]]), n_val


def _assert_resplit_coverage(probs: np.ndarray, y: np.ndarray, n_cal: int) -> None:
    """Over random calibration/test splits of the pool, LAC and APS cover ceil((n + 1) 0.9) / (n + 1)."""
    expected = math.ceil((n_cal + 1) * 0.9) / (n_cal + 1)  # the guarantee's exact mean without ties
    for method in ("lac", "aps"):
        rng = np.random.default_rng(0)
        covered = []
        for _ in range(RESPLITS):
            order = rng.permutation(len(y))
            cal, test = order[:n_cal], order[n_cal:]
            qhat = fit_threshold(probs[cal], y[cal], 0.9, method)
            covered.append(coverage_and_size(prediction_sets(probs[test], qhat, method), y[test])["coverage"])
        mean = float(np.mean(covered))
        assert abs(mean - 0.9) <= 0.03, method
        assert mean == pytest.approx(expected, abs=0.01), method


def test_conformal_coverage_on_real_radiographs(radiography_run: Path) -> None:
    probs, y, n_val = _val_and_test(radiography_run, _predictor(radiography_run, frontal_check=False))
    _assert_resplit_coverage(probs, y, n_val)


def test_conformal_coverage_on_phantoms(demo_run: Path, tmp_path: Path) -> None:
    """The demo's val and test phantoms pooled with 300 fresh ones from the same generator."""
    predictor = _predictor(demo_run, frontal_check=False)
    probs, y, _ = _val_and_test(demo_run, predictor)
    fresh = synthesize(tmp_path / "fresh", n=300, size=128, seed=1)
    more = _probabilities(predictor.predict(fresh["path"].tolist()), predictor.classes)
    labels = np.array([predictor.classes.index(label) for label in fresh["label"]])
    _assert_resplit_coverage(np.concatenate([probs, more]), np.concatenate([y, labels]), 150)
