"""A classifier trained with `preprocess.lungs=crop` bundles, predicts, explains and serves with the crop."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from covid_cxr.bundle import load_bundle
from covid_cxr.data.images import load_image
from covid_cxr.data.preprocess import normalize, prepare, prepare_with_box
from covid_cxr.serving import Settings, create_app
from covid_cxr.training.presets import load_config
from covid_cxr.training.train import train_run


@pytest.fixture(scope="module")
def crop_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset at 64 px, 2 epochs, on 8 real images per class, `--set preprocess.lungs=crop`."""
    root = tmp_path_factory.mktemp("crop")
    rows = [
        {"path": str(p), "label": folder}
        for folder in ("COVID", "Normal", "Viral Pneumonia")
        for p in sorted((shared_data / "radiography-224" / folder).iterdir())[:8]
    ]
    pd.DataFrame(rows).to_csv(root / "slice.csv", index=False)
    sets = ["preprocess.lungs=crop", "preprocess.size=64", "train.epochs=2", "train.accelerator=cpu"]
    cfg = load_config(preset="demo", overrides=sets)
    train_run(cfg, root / "slice.csv", root / "run", progress=False, cache_dir=root / "cache")
    return root / "run"


@pytest.mark.slow
def test_crop_travels_in_the_bundle_and_is_applied_everywhere(crop_run: Path) -> None:
    info = json.loads((crop_run / "bundle" / "bundle.json").read_text())
    assert info["preprocess"]["lungs"] == "crop"
    predictor = load_bundle(crop_run / "bundle")
    path = pd.read_csv(crop_run / "manifest.csv")["path"].iloc[0]
    image = load_image(path)
    spec = predictor.preprocess
    cropped = normalize(prepare(image, spec), spec)[None]
    whole = normalize(prepare(image, spec.model_copy(update={"lungs": "none"})), spec)[None]
    probs = predictor.predict_proba([image])
    np.testing.assert_allclose(probs, predictor.predict_tensor(cropped), atol=1e-5)
    assert not np.allclose(predictor.predict_tensor(whole), predictor.predict_tensor(cropped), atol=1e-6)
    explanation = predictor.explain(image)
    top, left, rows, cols = prepare_with_box(image, spec)[1]
    assert explanation.heatmap.shape == image.shape[:2]
    outside = np.ones(image.shape[:2], bool)
    outside[top : top + rows, left : left + cols] = False
    assert outside.any() and explanation.heatmap[outside].max() == 0
    assert explanation.heatmap[~outside].max() > 0


@pytest.mark.slow
def test_crop_model_serves_page_predict_and_explain(crop_run: Path) -> None:
    predictor = load_bundle(crop_run / "bundle")
    path = pd.read_csv(crop_run / "manifest.csv")["path"].iloc[1]
    data = Path(path).read_bytes()
    app = create_app(Settings(bundle=crop_run / "bundle", model_name="crop"))
    with TestClient(app) as client, torch.inference_mode():
        assert client.get("/").status_code == 200
        body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
        response = client.post("/v1/models/crop:predict", json=body)
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["predictions"], predictor.predict_proba([data]), atol=1e-5)
        upload = client.post("/explain", files={"file": ("chest.png", data, "image/png")})
        assert upload.status_code == 200 and upload.json()["overlay_png"]
