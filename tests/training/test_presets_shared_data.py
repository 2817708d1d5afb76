"""Every preset runs end to end on real X-rays (../shared/data) on the CPU, shrunk by overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covid_cxr.bundle import load_bundle
from covid_cxr.models.registry import BACKBONES
from covid_cxr.training.presets import list_presets, load_config
from covid_cxr.training.train import train_run

PER_CLASS = 10


@pytest.fixture(scope="module")
def small_radiography(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV manifest of PER_CLASS real images per class from radiography-224 (the csv reader)."""
    root = shared_data / "radiography-224"
    rows = [
        {"path": str(path), "label": folder.name}
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.iterdir())[:PER_CLASS]
    ]
    csv = tmp_path_factory.mktemp("radiography") / "subset.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def shrink(name: str) -> list[str]:
    """Overrides that make a preset CPU-sized: 1 epoch, small images, no downloads."""
    cfg = load_config(name)
    size = max(BACKBONES[cfg.model.arch].min_size, 32)
    overrides = [
        f"preprocess.size={size}",
        "train.epochs=1",
        "train.batch_size=8",
        "train.accelerator=cpu",
        "data.test_per_class=null",
        "data.test_fraction=0.3",
    ]
    if cfg.model.pretrained == "imagenet" and cfg.model.arch != "efficientnet_lite0":
        overrides.append("model.pretrained=none")  # no network here; the offline Lite0 keeps its weights
    if name == "xu-vgg16-binary":
        overrides.append("data.classes=[COVID,Normal]")
    if name == "xu-vgg16-4class":
        overrides.append("data.classes=null")  # radiography-224 has 3 of the 4 classes
    return overrides


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", [p.name for p in list_presets()])
def test_preset_runs_end_to_end_on_real_images(name: str, small_radiography: Path, tmp_path: Path) -> None:
    cfg = load_config(name, None, shrink(name))
    result = train_run(cfg, small_radiography, tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["n_test"] > 0
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) >= 1
    predictor = load_bundle(result.bundle)
    expected = ["COVID", "Normal"] if name == "xu-vgg16-binary" else ["COVID", "Normal", "Viral Pneumonia"]
    assert sorted(predictor.classes) == expected
    probs = predictor.predict_proba([str(next((Path(p) for p in pd.read_csv(small_radiography)["path"])))])
    assert probs.shape == (1, len(expected)) and abs(float(probs.sum()) - 1.0) < 1e-4
