"""Cross-source evaluation on real X-rays: a radiography-224 model evaluated on kermany-224."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covid_cxr.data.readers import read_source
from covid_cxr.errors import DataError
from covid_cxr.evaluation.evaluate import evaluate_run
from covid_cxr.training.presets import load_config
from covid_cxr.training.train import train_run


@pytest.fixture(scope="module")
def radiography_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch convnet trained on 20 radiography-224 images per class (a CSV manifest subset)."""
    root = tmp_path_factory.mktemp("cross")
    rows = [
        {"path": str(p), "label": folder.name}
        for folder in sorted(d for d in (shared_data / "radiography-224").iterdir() if d.is_dir())
        for p in sorted(folder.iterdir())[:20]
    ]
    pd.DataFrame(rows).to_csv(root / "subset.csv", index=False)
    cfg = load_config(
        "machinecurve-convnet",
        None,
        [
            "preprocess.size=32",
            "train.epochs=1",
            "data.test_per_class=null",
            "data.test_fraction=0.25",
            "train.accelerator=cpu",
        ],
    )
    train_run(cfg, root / "subset.csv", root / "run", progress=False, cache_dir=root / "cache")
    return root / "run"


@pytest.mark.slow
@pytest.mark.shared_data
def test_radiography_run_evaluates_on_kermany_with_classes_matched(
    radiography_run: Path, shared_data: Path
) -> None:
    kermany = shared_data / "kermany-224"
    result = evaluate_run(radiography_run, kermany, reader_options={"pneumonia_types": True}, bootstrap=50)
    expected = read_source(kermany, reader="kermany", pneumonia_types=True).manifest["label"].value_counts()
    dataset = result["dataset"]
    assert dataset["class_matching"] == {"NORMAL": "Normal", "viral": "Viral Pneumonia"}
    assert dataset["excluded"] == {"bacterial": int(expected["bacterial"])}
    assert dataset["n_evaluated"] == int(expected["NORMAL"] + expected["viral"])
    saved = json.loads((radiography_run / "evaluation-kermany-224" / "metrics.json").read_text())
    assert saved["metrics"]["headline"]["accuracy"] == pytest.approx(
        result["metrics"]["headline"]["accuracy"]
    )
    with pytest.raises(DataError, match="PNEUMONIA"):
        evaluate_run(
            radiography_run, kermany, shortcut_checks=False, bootstrap=0
        )  # NORMAL/PNEUMONIA: 1 match
