"""`lungs train`: metrics.csv with Dice/IoU per epoch, resume, a shippable weights file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covid_cxr.data.images import load_image
from covid_cxr.lungs.segmenter import WEIGHTS_FILE, load_segmenter
from covid_cxr.lungs.train import LungTrainConfig, train_lungs


@pytest.mark.slow
def test_train_writes_metrics_weights_and_resumes(pairs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = LungTrainConfig(size=32, epochs=1, batch_size=8)
    figures = train_lungs(pairs_dir, out, cfg, progress=False)
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1]
    assert {"train_dice", "val_dice", "val_iou"} <= set(metrics.columns)
    assert 0 <= metrics["val_dice"].iloc[0] <= 1
    assert (
        set(figures["per_source"]) == {"ph"}
        and figures["n"] == (pd.read_csv(out / "split.csv")["split"] == "test").sum()
    )
    weights = out / WEIGHTS_FILE
    assert weights.stat().st_size <= 1_000_000
    image = load_image(next((pairs_dir / "images").iterdir()))
    mask = load_segmenter(str(weights))(np.ascontiguousarray(image[:, :50]))
    assert mask.shape == (64, 50) and set(np.unique(mask)) <= {0, 1}
    train_lungs(pairs_dir, out, LungTrainConfig(size=32, epochs=2, batch_size=8), resume=True, progress=False)
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2]
