"""Fixtures: a small folder of phantom chest images with their lung masks (images/ + masks/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_cxr.data.synthetic import render_phantom


def write_pairs(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """`n` phantoms as images/PH_<i>.png and masks/PH_<i>.png (0/255)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, _, lungs = render_phantom("normal" if i % 2 else "covid", rng, size)
        Image.fromarray(image).save(root / "images" / f"PH_{i:03d}.png")
        Image.fromarray(lungs.astype(np.uint8) * 255).save(root / "masks" / f"PH_{i:03d}.png")
    return root


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """40 phantom image/mask pairs of 64 px."""
    return write_pairs(tmp_path / "pairs", 40)
