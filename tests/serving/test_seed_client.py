"""Seed 000's TF-Serving client, run verbatim (only the host and port changed) against a live server."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from covid_cxr.bundle import load_bundle
from tests.serving.conftest import CLASSES, SPEC, png_bytes

pytest.importorskip("requests")

# Seed 000 ("Predicting Covid-19 Positive Cases from Chest X-Ray Images"), section "Deployment",
# copied as written; only 'http://localhost:8501' became {url}.
SEED_CLIENT = """
import json

data = json.dumps({"signature_name": "serving_default", "instances": input_image.tolist()})

import requests

headers = {"content-type": "application/json"}

r = requests.post('{url}/v1/models/covid_vgg16_no_reg_grad:predict', data=data, headers=headers)

j = r.json()

pred = np.array(j['predictions'])

pred = pred.argmax(axis=1)

class_names = ['COVID-19', 'Normal', 'Viral Pneumonia']

pred = [class_names[i] for i in pred]

print('The prediction for this image is: ',pred[0])
"""


def load_image_normalize(data: bytes, mean: float, std: float, size: int) -> np.ndarray:
    """The seed's own input preparation: RGB, resized, (x - mean) / std, a batch of one (1, H, W, 3)."""
    x = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)), dtype=np.float32)
    return np.expand_dims((x - mean) / std, axis=0)


def test_seed_000_client_prints_the_prediction(live_server: str, bundle_dir) -> None:
    image = png_bytes((64, 64, 3), seed=21)
    input_image = load_image_normalize(image, mean=120.0, std=60.0, size=SPEC.size)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(SEED_CLIENT.replace("{url}", live_server), {"np": np, "input_image": input_image})
    printed = out.getvalue().strip()
    assert printed.startswith("The prediction for this image is: ")
    predicted = printed.removeprefix("The prediction for this image is: ").strip()
    probs = load_bundle(bundle_dir).predict_tensor(input_image.transpose(0, 3, 1, 2))
    assert predicted == CLASSES[int(np.argmax(probs))]


def test_seed_000_body_gives_the_predictors_probabilities(live_server: str, bundle_dir) -> None:
    import requests

    input_image = load_image_normalize(png_bytes((64, 64, 3), seed=22), mean=120.0, std=60.0, size=SPEC.size)
    data = json.dumps({"signature_name": "serving_default", "instances": input_image.tolist()})
    r = requests.post(
        f"{live_server}/v1/models/covid_vgg16_no_reg_grad:predict",
        data=data,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    probs = load_bundle(bundle_dir).predict_tensor(input_image.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(np.array(r.json()["predictions"]), probs, atol=1e-5)
