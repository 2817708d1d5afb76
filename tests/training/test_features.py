"""Frozen backbone without augmentation: training the head on cached features equals full-model training."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from covid_cxr.bundle import load_bundle
from covid_cxr.config import RunConfig
from covid_cxr.data.preprocess import normalize
from covid_cxr.data.spec import Preprocess
from covid_cxr.data.synthetic import synthesize
from covid_cxr.models.zoo import build_model
from covid_cxr.training.features import backbone_features, use_cached_features
from covid_cxr.training.train import RunResult, train_run

pytestmark = pytest.mark.slow


def _config(cache_features: bool, freeze: str = "all", augment: dict | None = None) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "frozen",
            "preprocess": {"size": 32, "channels": 3, "normalize": "imagenet"},
            "augment": augment or {},
            "model": {
                "arch": "efficientnet_lite0",
                "pretrained": "imagenet",
                "freeze": freeze,
                "head": {"pooling": "gap", "hidden": [32], "dropout": [0.0]},
            },
            "optim": {"lr": 3e-3},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "accelerator": "cpu",
                "seed": 7,
                "cache_features": cache_features,
            },
        }
    )


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    synthesize(root, n=45, size=32, seed=5)
    return root


def test_feature_path_is_chosen_only_for_frozen_unaugmented_runs() -> None:
    assert use_cached_features(_config(True))
    assert not use_cached_features(_config(False))
    assert not use_cached_features(_config(True, augment={"horizontal_flip": True}))
    assert not use_cached_features(_config(True, freeze="none"))


def test_backbone_features_equal_the_backbone_on_normalised_images() -> None:
    spec = Preprocess(size=32, channels=3, normalize="imagenet")
    model = build_model("mobilenet_v2", None, 3, "none", "all", image_size=32)
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    features = backbone_features(model.backbone, images, spec, batch_size=2)
    with torch.no_grad():
        expected = model.backbone.eval()(normalize(images, spec))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    assert model.head.training  # only the backbone pass ran in eval mode; modes are restored


@pytest.fixture(scope="module")
def runs(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunResult, str]]:
    """The same frozen run trained on cached features and as a full model, with their logs."""
    root = tmp_path_factory.mktemp("runs")
    handler, logger = _Capture(), logging.getLogger("covid_cxr.training.train")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    out = {}
    try:
        for name, cache_features in (("cached", True), ("plain", False)):
            handler.lines.clear()
            result = train_run(
                _config(cache_features), phantoms, root / name, progress=False, cache_dir=root / "cache"
            )
            out[name] = (result, "\n".join(handler.lines))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_log_names_the_training_path(runs: dict) -> None:
    assert "training head on cached backbone features" in runs["cached"][1]
    assert "training full model" not in runs["cached"][1]
    assert "training full model" in runs["plain"][1]


def test_cached_features_and_plain_training_agree(runs: dict) -> None:
    a = pd.read_csv(runs["cached"][0].out / "metrics.csv")
    b = pd.read_csv(runs["plain"][0].out / "metrics.csv")
    assert a["epoch"].tolist() == b["epoch"].tolist() == [1, 2, 3]
    assert a["val_accuracy"].tolist() == b["val_accuracy"].tolist()
    assert a["val_accuracy"].nunique() > 1  # the head really learned something
    np.testing.assert_allclose(a[["train_loss", "val_loss"]], b[["train_loss", "val_loss"]], rtol=1e-4)
    assert runs["cached"][0].metrics["test_accuracy"] == runs["plain"][0].metrics["test_accuracy"]


def test_bundle_of_a_feature_run_holds_the_trained_head(runs: dict) -> None:
    result = runs["cached"][0]
    manifest = pd.read_csv(result.out / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    probs = load_bundle(result.bundle).predict_proba(test["path"].tolist())
    classes = sorted(manifest["label"].unique())
    accuracy = float(np.mean(np.array(classes)[probs.argmax(axis=1)] == test["label"].to_numpy()))
    assert accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
