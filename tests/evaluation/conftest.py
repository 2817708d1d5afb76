"""Trained runs shared by the evaluation tests: a tiny one (seconds) and, for slow tests, phantoms with and
without a shortcut marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from covid_cxr.config import RunConfig
from covid_cxr.data.synthetic import synthesize
from covid_cxr.training.train import train_run


def _config(size: int, hidden: int, epochs: int, seed: int, **data: float) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "eval-test",
            "preprocess": {"size": size, "channels": 1, "normalize": "dataset"},
            "model": {"arch": "convnet", "head": {"pooling": "flatten", "hidden": [hidden]}},
            "data": data,
            "train": {
                "epochs": epochs,
                "batch_size": 16 if size < 64 else 32,
                "accelerator": "cpu",
                "seed": seed,
            },
        }
    )


def _train(root: Path, n: int, size: int, marker: bool, cfg: RunConfig, seed: int) -> Path:
    synthesize(root / "data", n=n, size=size, shortcut_marker=marker, seed=seed)
    train_run(cfg, root / "data", root / "run", progress=False, cache_dir=root / "cache")
    return root / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 phantoms at 32 px, the seed-004 ConvNet trained 6 epochs (about a second): a run folder."""
    root = tmp_path_factory.mktemp("tiny")
    return _train(root, 120, 32, False, _config(32, 32, 6, 1, test_fraction=0.3, val_fraction=0.3), seed=1)


@pytest.fixture(scope="session")
def marker_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 phantoms at 64 px with the shortcut marker burnt into every 'normal' image; trained 8 epochs."""
    root = tmp_path_factory.mktemp("marker")
    return _train(root, 240, 64, True, _config(64, 32, 8, 5, test_fraction=0.25), seed=5)


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same phantoms and training without the marker."""
    root = tmp_path_factory.mktemp("clean")
    return _train(root, 240, 64, False, _config(64, 32, 8, 5, test_fraction=0.25), seed=5)
