"""The protocols' own clients against the live server: NVIDIA's tritonclient (KServe v2, its defaults:
binary tensors) and a TF-Serving REST client addressing the model's version."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from covid_cxr.bundle import load_bundle
from covid_cxr.predictor import Predictor
from tests.serving.conftest import CLASSES, MODEL_NAME, SPEC, png_bytes

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def triton(live_server: str) -> httpclient.InferenceServerClient:
    client = httpclient.InferenceServerClient(live_server.removeprefix("http://"))
    yield client
    client.close()


def batch(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, SPEC.size, SPEC.size)).astype(np.float32)


def test_tritonclient_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    assert triton.is_model_ready(MODEL_NAME) and triton.is_model_ready(MODEL_NAME, model_version="1")
    assert not triton.is_model_ready(MODEL_NAME, model_version="2")
    meta = triton.get_model_metadata(MODEL_NAME, model_version="1")
    assert meta["versions"] == ["1"]
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {"input": "FP32", "image": "BYTES"}
    assert meta["parameters"]["class_names"] == CLASSES


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["", "1"])
def test_tritonclient_infer_matches_predictor(
    triton: httpclient.InferenceServerClient, predictor: Predictor, binary: bool, version: str
) -> None:
    x = batch(3, seed=1)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = triton.infer(MODEL_NAME, [tensor], model_version=version, outputs=outputs, request_id="r1")
    got = result.as_numpy("probabilities")
    assert got.shape == (3, len(CLASSES)) and got.dtype == np.float32
    np.testing.assert_allclose(got, predictor.predict_tensor(x), atol=1e-5)
    response = result.get_response()
    assert response["model_version"] == "1" and response["id"] == "r1"
    assert ("data" in response["outputs"][0]) is not binary


def test_tritonclient_defaults_send_and_get_binary(
    triton: httpclient.InferenceServerClient, predictor: Predictor
) -> None:
    x = batch(2, seed=2)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary_data=True, and no outputs: binary_data_output=True
    result = triton.infer(MODEL_NAME, [tensor])
    assert "data" not in result.get_response()["outputs"][0]
    np.testing.assert_allclose(result.as_numpy("probabilities"), predictor.predict_tensor(x), atol=1e-5)


def test_tritonclient_sends_encoded_images_as_bytes(
    triton: httpclient.InferenceServerClient, predictor: Predictor
) -> None:
    images = [png_bytes((48, 40), seed=3), png_bytes((30, 50, 3), seed=4)]
    tensor = httpclient.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    got = triton.infer(MODEL_NAME, [tensor]).as_numpy("probabilities")
    np.testing.assert_allclose(got, predictor.predict_proba(images), atol=1e-5)


def test_tritonclient_unknown_output_is_refused(triton: httpclient.InferenceServerClient) -> None:
    x = batch(1)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        triton.infer(MODEL_NAME, [tensor], outputs=[httpclient.InferRequestedOutput("nope")])


def test_tf_serving_client_predicts_on_the_version_path(live_server: str, predictor: Predictor) -> None:
    """What tensorflow_serving's REST examples do: versioned status, metadata and :predict."""
    base = f"{live_server}/v1/models/{MODEL_NAME}/versions/1"
    with httpx.Client() as http:
        assert http.get(base).json()["model_version_status"][0]["state"] == "AVAILABLE"
        signatures = http.get(f"{base}/metadata").json()["metadata"]["signature_def"]["signature_def"]
        assert signatures["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
        x = np.random.default_rng(5).normal(size=(2, SPEC.size, SPEC.size, 3)).astype(np.float32)
        body = {"signature_name": "serving_default", "instances": x.tolist()}
        got = np.array(http.post(f"{base}:predict", json=body).json()["predictions"])
        np.testing.assert_allclose(got, predictor.predict_tensor(x.transpose(0, 3, 1, 2)), atol=1e-5)
        image = png_bytes(seed=6)
        body = {"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(image).decode()}]}
        labelled = http.post(f"{live_server}/v1/models/{MODEL_NAME}/labels/stable:predict", json=body)
        np.testing.assert_allclose(
            labelled.json()["predictions"], predictor.predict_proba([image]), atol=1e-5
        )
        refused = http.post(f"{base}:predict", json=[1, 2])
        assert refused.status_code == 400 and "error" in refused.json()
