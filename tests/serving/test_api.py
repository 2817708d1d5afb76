"""The REST API over a tiny bundle: every protocol's answers checked against the Predictor itself."""

from __future__ import annotations

import base64
import io
import json
import logging
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covid_cxr.bundle import load_bundle
from covid_cxr.data.images import decode_bytes
from covid_cxr.predictor import Predictor
from covid_cxr.serving.inputs import NHWCRows, batch_tensor, nhwc_batch
from tests.data.test_dicom import make_dicom
from tests.serving.conftest import CLASSES, MODEL_NAME, SPEC, make_client, png_bytes

V1 = f"/v1/models/{MODEL_NAME}"
V2 = f"/v2/models/{MODEL_NAME}"


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return load_bundle(bundle_dir)


def nhwc(count: int, seed: int = 0) -> np.ndarray:
    """Random normalised inputs as a Keras client would send them (N, H, W, C)."""
    return np.random.default_rng(seed).normal(size=(count, SPEC.size, SPEC.size, 3)).astype(np.float32)


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def decode_png_b64(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


# --- health, metadata ---------------------------------------------------------------------------


def test_healthz_names_model_classes_and_intended_use(client: TestClient) -> None:
    body = client.get("/healthz").json()
    card = body.pop("model_card")
    assert card["intended_use"] == "research only, not for diagnosis"
    assert card["metrics"] == {"accuracy": 0.5} and card["run"] == "tiny serve"
    assert card["conformal_coverage"] is None  # no conformal sets in this bundle
    assert "fp-serving" in card["training_data"]  # the bundle's training-data fingerprint
    assert body == {
        "status": "ok",
        "model": MODEL_NAME,
        "classes": CLASSES,
        "backend": "onnx",
        "auth_required": False,
        "intended_use": "research only, not for diagnosis",
    }


def test_kserve_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"{V2}/ready").json() == {"name": MODEL_NAME, "ready": True}
    assert client.get("/v2").json()["name"] == "covid-cxr"


def test_tf_model_status_is_available(client: TestClient) -> None:
    status = client.get(V1).json()["model_version_status"]
    assert status == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]


def test_tf_metadata_declares_nhwc_input_and_class_names(client: TestClient) -> None:
    meta = client.get(f"{V1}/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in signature["inputs"]["input"]["tensor_shape"]["dim"]]
    assert dims == [-1, SPEC.size, SPEC.size, 3]
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [int(d["size"]) for d in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == [-1, 3]
    assert meta["metadata"]["class_names"] == CLASSES
    assert meta["model_spec"]["name"] == MODEL_NAME
    image_bytes = meta["metadata"]["signature_def"]["signature_def"]["serving_bytes"]["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"


def test_kserve_metadata_declares_nchw_fp32_and_image_bytes(client: TestClient) -> None:
    meta = client.get(V2).json()
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, SPEC.size, SPEC.size]},
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["class_names"] == CLASSES


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/explain", "/healthz", "/v1/models/{name}:predict", "/v2/models/{name}/infer"):
        assert path in paths
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


# --- predictions ----------------------------------------------------------------------------------


def test_tf_predict_instances_match_predictor(client: TestClient, predictor: Predictor) -> None:
    x = nhwc(3)
    response = client.post(
        f"{V1}:predict", json={"signature_name": "serving_default", "instances": x.tolist()}
    )
    assert response.status_code == 200
    got = np.array(response.json()["predictions"])
    np.testing.assert_allclose(got, predictor.predict_tensor(x.transpose(0, 3, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_tf_predict_b64_instances_are_decoded_and_preprocessed(
    client: TestClient, predictor: Predictor
) -> None:
    images = [png_bytes((48, 40), seed=1), png_bytes((30, 50, 3), seed=2)]
    response = client.post(f"{V1}:predict", json={"instances": [b64(data) for data in images]})
    got = np.array(response.json()["predictions"])
    np.testing.assert_allclose(got, predictor.predict_proba(images), atol=1e-6)


def test_tf_predict_mixes_named_b64_and_array_instances(client: TestClient, predictor: Predictor) -> None:
    image, x = png_bytes(seed=3), nhwc(1, seed=3)
    instances = [{"input": b64(image)}, x[0].tolist(), {"image_bytes": b64(image)}]
    response = client.post(f"{V1}:predict", json={"instances": instances})
    got = np.array(response.json()["predictions"])
    np.testing.assert_allclose(got[0], predictor.predict_proba([image])[0], atol=1e-6)
    np.testing.assert_allclose(got[1], predictor.predict_tensor(x.transpose(0, 3, 1, 2))[0], atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)


@pytest.mark.parametrize("wrap", [False, True])
def test_tf_predict_columnar_inputs(client: TestClient, predictor: Predictor, wrap: bool) -> None:
    x = nhwc(2, seed=4)
    inputs = {"input": x.tolist()} if wrap else x.tolist()
    body = client.post(f"{V1}:predict", json={"inputs": inputs}).json()
    np.testing.assert_allclose(
        np.array(body["outputs"]), predictor.predict_tensor(x.transpose(0, 3, 1, 2)), atol=1e-6
    )


# --- float-array bodies (seed 000's client), decoded straight to float32 ------------------------------


def seed_body(instances: object, **fields: object) -> bytes:
    """Seed 000's body: json.dumps of signature_name and the batch as nested lists (full-precision floats)."""
    return json.dumps({"signature_name": "serving_default", "instances": instances, **fields}).encode()


def test_float_array_body_matches_predictor_and_the_general_path(
    client: TestClient, predictor: Predictor
) -> None:
    x = nhwc(2, seed=30)
    array = client.post(f"{V1}:predict", content=seed_body(x.tolist()))
    named = client.post(f"{V1}:predict", json={"instances": [{"input": row.tolist()} for row in x]})
    assert array.status_code == named.status_code == 200
    got = np.array(array.json()["predictions"])
    np.testing.assert_allclose(got, predictor.predict_tensor(x.transpose(0, 3, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(got, np.array(named.json()["predictions"]), atol=1e-7)


def test_nhwc_batch_is_batch_tensor_and_leaves_every_mistake_to_it() -> None:
    x = nhwc(3, seed=31)
    text = json.dumps(x.tolist())
    rows = msgspec.json.decode(text, type=NHWCRows)
    fast = nhwc_batch(rows, SPEC, max_instances=3)
    assert fast is not None and fast.dtype == np.float32 and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(fast, batch_tensor(json.loads(text), SPEC, 10**6, 3))
    ragged = (rows[0][:-1] + ((rows[0][0][:-1]),), *rows[1:])
    overflow = ((((1e39, 0.0, 0.0), *rows[0][0][1:]), *rows[0][1:]),)
    for bad in [(), rows + rows[:1], ragged, overflow, tuple(r[:31] for r in rows), ((((1.0,),),),)]:
        assert nhwc_batch(bad, SPEC, max_instances=3) is None


def _mutated(change: str) -> bytes:
    """A valid (1, 32, 32, 3) seed-000 body with one mistake deep inside the array."""
    rows = nhwc(1, seed=32).tolist()
    if change == "ragged":
        del rows[0][5][7]
    elif change == "short row":
        rows[0][5][7] = rows[0][5][7][:2]
    elif change == "overflow":
        rows[0][3][4][1] = 1e39
    elif change == "size":
        rows[0] = rows[0][:31]
    elif change != "valid":
        rows[0][3][4][1] = {"string": "0.5", "null": None, "nan": float("nan")}[change]
    return seed_body(rows)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (_mutated("ragged"), 400, "instance 0: expected a rectangular array of numbers"),
        (_mutated("short row"), 400, "instance 0: expected a rectangular array of numbers"),
        (_mutated("string"), 400, "instance 0: expected a rectangular array of numbers"),
        (_mutated("null"), 400, "instance 0: expected a rectangular array of numbers"),
        (_mutated("nan"), 400, "instance 0: values must be finite"),
        (_mutated("overflow"), 400, "instance 0: values must be finite"),
        (_mutated("size"), 400, "instance 0: expected shape [32, 32, 3] (NHWC), got [31, 32, 3]"),
        (_mutated("valid")[:-1], 400, "malformed JSON"),
        (_mutated("valid") + b" x", 400, "malformed JSON"),
        (seed_body(nhwc(1).tolist(), signature_name="predict"), 400, "unknown signature_name 'predict'"),
        (seed_body(nhwc(1).tolist(), inputs=nhwc(1).tolist()), 400, "exactly one"),
        (seed_body(nhwc(1).tolist(), instance=1), 400, "instance: Extra inputs are not permitted"),
    ],
)
def test_float_array_mistakes_get_4xx_naming_them(
    client: TestClient, body: bytes, status: int, words: str
) -> None:
    response = client.post(f"{V1}:predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_float_array_instances_over_the_limit_are_413(bundle_dir: Path) -> None:
    with make_client(bundle_dir, max_instances=2) as client:
        response = client.post(f"{V1}:predict", content=seed_body(nhwc(3).tolist()))
        assert response.status_code == 413 and "3 instances exceed the limit of 2" in response.json()["error"]
        columnar = client.post(f"{V1}:predict", json={"inputs": nhwc(3).tolist()})
        assert columnar.status_code == 413


def test_kserve_infer_matches_predictor(client: TestClient, predictor: Predictor) -> None:
    x = nhwc(2, seed=5).transpose(0, 3, 1, 2)
    request = {
        "id": "r1",
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
    }
    body = client.post(f"{V2}/infer", json=request).json()
    assert body["id"] == "r1" and body["model_name"] == MODEL_NAME
    [output] = body["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [2, 3] and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(output["data"], (2, 3)), predictor.predict_tensor(x), atol=1e-6)


def test_upload_predict_multipart_and_raw_body(client: TestClient, predictor: Predictor) -> None:
    image = png_bytes((60, 44), seed=6)
    want = predictor.predict_proba([image])[0]
    for response in (
        client.post("/predict", files={"file": ("chest.png", image, "image/png")}),
        client.post("/predict", content=image, headers={"content-type": "image/png"}),
    ):
        assert response.status_code == 200
        body = response.json()
        np.testing.assert_allclose([body["probabilities"][c] for c in CLASSES], want, atol=1e-6)
        assert body["predicted"] == CLASSES[int(np.argmax(want))]
        assert body["model"] == MODEL_NAME


def test_upload_predict_dicom(client: TestClient, predictor: Predictor) -> None:
    pixels = np.random.default_rng(7).integers(0, 4096, (40, 36), dtype=np.uint16)
    dicom = make_dicom(pixels, PatientName="Doe^Jane", PatientID="PID-4711")
    body = client.post("/predict", files={"file": ("x.dcm", dicom, "application/dicom")}).json()
    np.testing.assert_allclose(
        [body["probabilities"][c] for c in CLASSES], predictor.predict_proba([dicom])[0], atol=1e-6
    )


# --- explanations ---------------------------------------------------------------------------------


def test_upload_explain_returns_overlay_and_image(client: TestClient, predictor: Predictor) -> None:
    image = png_bytes((48, 40), seed=8)
    response = client.post("/explain", files={"file": ("chest.png", image, "image/png")})
    assert response.status_code == 200
    body = response.json()
    np.testing.assert_allclose(
        [body["probabilities"][c] for c in CLASSES], predictor.predict_proba([image])[0], atol=1e-5
    )
    assert body["target_class"] == body["predicted"] and body["method"] == "gradcam"
    overlay, shown = decode_png_b64(body["overlay_png"]), decode_png_b64(body["image_png"])
    assert overlay.shape == shown.shape == (48, 40, 3)
    np.testing.assert_array_equal(shown[..., 0], decode_bytes(image))
    assert not np.array_equal(overlay, shown)


def test_upload_explain_target_and_method(client: TestClient) -> None:
    files = {"file": ("chest.png", png_bytes(seed=9), "image/png")}
    body = client.post("/explain", files=files, params={"target": "Normal", "method": "gradcam++"}).json()
    assert body["target_class"] == "Normal" and body["method"] == "gradcam++"
    assert client.post("/explain", files=files, params={"target": "2"}).json()["target_class"] == CLASSES[2]
    bad_target = client.post("/explain", files=files, params={"target": "Flu"})
    assert bad_target.status_code == 422 and "Flu" in bad_target.json()["error"]
    bad_method = client.post("/explain", files=files, params={"method": "magic"})
    assert bad_method.status_code == 422 and "gradcam" in bad_method.json()["error"]


def test_explain_shrinks_large_images_for_display(client: TestClient) -> None:
    body = client.post("/explain", content=png_bytes((1500, 1200), seed=10)).json()
    assert decode_png_b64(body["overlay_png"]).shape == (1024, 819, 3)


def test_tf_explain_b64_instances(client: TestClient, predictor: Predictor) -> None:
    images = [png_bytes(seed=11), png_bytes((36, 36, 3), seed=12)]
    response = client.post(f"{V1}:explain", json={"instances": [b64(data) for data in images]})
    assert response.status_code == 200
    explanations = response.json()["explanations"]
    assert len(explanations) == 2
    for item, data in zip(explanations, images, strict=True):
        np.testing.assert_allclose(
            list(item["probabilities"].values()), predictor.predict_proba([data])[0], atol=1e-5
        )
        assert decode_png_b64(item["overlay_png"]).shape[:2] == decode_bytes(data).shape[:2]


def test_tf_explain_refuses_array_instances(client: TestClient) -> None:
    response = client.post(f"{V1}:explain", json={"instances": nhwc(1).tolist()})
    assert response.status_code == 400 and "b64" in response.json()["error"]


# --- client mistakes: 4xx JSON naming the problem, never 5xx --------------------------------------

TRUNCATED_PNG = png_bytes((64, 64), seed=13)[:200]
FIELD_ONLY = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--b--\r\n'


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"),
    [
        ("post", "/predict", {"content": b"hello, not an image"}, 400, "not an image"),
        ("post", "/predict", {"files": {"file": ("a.png", TRUNCATED_PNG, "image/png")}}, 400, "truncated"),
        ("post", "/predict", {"content": b""}, 400, "empty"),
        ("post", "/predict", {"files": {"file": ("a.png", b"", "image/png")}}, 400, "empty"),
        (
            "post",
            "/predict",
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            400,
            "multipart",
        ),
        (
            "post",
            "/predict",
            {"content": FIELD_ONLY, "headers": {"content-type": "multipart/form-data; boundary=b"}},
            400,
            "one file",
        ),
        ("post", "/explain", {"content": b"GIF89a-truncated"}, 400, "image"),
        ("post", f"{V1}:predict", {"content": b"{not json"}, 400, "malformed JSON"),
        ("post", f"{V1}:predict", {"content": b""}, 400, "empty"),
        ("post", f"{V1}:predict", {"json": {"instances": [[1, 2, 3]]}}, 400, "expected shape [32, 32, 3]"),
        ("post", f"{V1}:predict", {"json": {"instances": [np.zeros((32, 32, 1)).tolist()]}}, 400, "shape"),
        ("post", f"{V1}:predict", {"json": {"instances": [[["a"] * 3] * 32] * 1}}, 400, "numbers"),
        ("post", f"{V1}:predict", {"json": {"instances": [[[1, [2]], [3]]]}}, 400, "numbers"),
        ("post", f"{V1}:predict", {"json": {"instances": [{"b64": "@@@"}]}}, 400, "base64"),
        ("post", f"{V1}:predict", {"json": {"instances": [{"b64": 12}]}}, 400, "base64"),
        ("post", f"{V1}:predict", {"json": {"instances": [{"b64": "aGVsbG8="}]}}, 400, "not an image"),
        ("post", f"{V1}:predict", {"json": {"instances": [{"pixels": 1}]}}, 400, "b64"),
        ("post", f"{V1}:predict", {"json": {"instances": []}}, 400, "no instances"),
        ("post", f"{V1}:predict", {"json": {}}, 400, "exactly one"),
        ("post", f"{V1}:predict", {"json": {"instances": [], "inputs": []}}, 400, "exactly one"),
        ("post", f"{V1}:predict", {"json": {"instances": 5}}, 400, "instances"),
        ("post", f"{V1}:predict", {"json": {"instance": []}}, 400, "instance"),
        ("post", f"{V1}:predict", {"json": [1, 2]}, 400, "invalid request"),
        ("post", f"{V1}/versions/2:predict", {"json": {"instances": [1]}}, 404, "version '2'"),
        ("post", f"{V1}/labels/canary:predict", {"json": {"instances": [1]}}, 404, "label 'canary'"),
        (
            "post",
            f"{V1}:predict",
            {"json": {"signature_name": "serving_default", "instances": [{"b64": "aGVsbG8="}]}},
            400,
            "DT_FLOAT",
        ),
        (
            "post",
            f"{V1}:predict",
            {"json": {"signature_name": "serving_bytes", "instances": [[[[0.0] * 3] * 32] * 32]}},
            400,
            "DT_STRING",
        ),
        ("post", f"{V1}:predict", {"json": {"inputs": 3}}, 400, "inputs"),
        ("post", f"{V1}:predict", {"json": {"signature_name": "other", "instances": [1]}}, 400, "signature"),
        ("post", f"{V1}:predict", {"content": b'{"instances": [NaN]}'}, 400, "finite"),
        (
            "post",
            f"{V1}:predict",
            {"content": b'{"instances": [' + b"[" * 5000 + b"]" * 5000 + b"]}"},
            400,
            "",
        ),
        ("post", "/v1/models/other:predict", {"json": {"instances": [1]}}, 404, MODEL_NAME),
        ("get", "/v1/models/other", {}, 404, "other"),
        ("get", "/v2/models/other", {}, 404, "other"),
        ("get", "/nowhere", {}, 404, "Not Found"),
        ("get", f"{V1}:predict", {}, 404, "not found"),
        ("put", f"{V1}:predict", {}, 405, "Method Not Allowed"),
        (
            "post",
            f"{V2}/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "input", "shape": [1, 3, 32, 32], "datatype": "INT8", "data": [0] * 3072}
                    ]
                }
            },
            400,
            "FP32",
        ),
        (
            "post",
            f"{V2}/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "input", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": [0] * 3072}
                    ]
                }
            },
            400,
            "shape",
        ),
        (
            "post",
            f"{V2}/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0] * 10}
                    ]
                }
            },
            400,
            "3072",
        ),
        (
            "post",
            f"{V2}/infer",
            {
                "json": {
                    "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0] * 3072}]
                }
            },
            400,
            "'input'",
        ),
        ("post", f"{V2}/infer", {"json": {"inputs": []}}, 400, "inputs"),
        ("post", f"{V2}/infer", {"json": {"inputs": [{"name": "input"}]}}, 400, "shape"),
        ("get", f"{V2}/versions/7/ready", {}, 404, "version '7'"),
        ("post", "/explain", {"content": b"x", "params": {"target": "t" * 500}}, 422, "target"),
    ],
)
def test_client_mistakes_get_4xx_json(
    client: TestClient, method: str, path: str, kwargs: dict, status: int, words: str
) -> None:
    response = client.request(method.upper(), path, **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_too_many_instances_is_413(bundle_dir: Path) -> None:
    with make_client(bundle_dir, max_instances=2) as client:
        response = client.post(f"{V1}:predict", json={"instances": nhwc(3).tolist()})
        assert response.status_code == 413 and "limit of 2" in response.json()["error"]
        infer = {
            "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": [0] * 9216}]
        }
        assert client.post(f"{V2}/infer", json=infer).status_code == 413
        assert client.post(f"{V1}:predict", json={"instances": nhwc(2).tolist()}).status_code == 200


def test_body_over_the_limit_is_413_declared_or_streamed(bundle_dir: Path) -> None:
    image = png_bytes((64, 64), seed=14)
    with make_client(bundle_dir, max_upload_bytes=len(image) - 1) as client:
        declared = client.post("/predict", content=image)
        assert declared.status_code == 413 and "limit" in declared.json()["error"]
        streamed = client.post("/predict", content=iter([image[:100], image[100:]]))  # chunked, no length
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        truncated = client.post(
            "/predict", content=image[: len(image) // 2]
        )  # under the limit: decoded, refused
        assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]


def test_decompression_bomb_is_refused(bundle_dir: Path) -> None:
    with make_client(bundle_dir, max_pixels=1000) as client:
        response = client.post("/predict", content=png_bytes((48, 40)))
        assert response.status_code == 400 and "pixel limit of 1000" in response.json()["error"]
        bomb = client.post(f"{V1}:predict", json={"instances": [b64(png_bytes((40, 30)))]})
        assert bomb.status_code == 400 and "pixel limit" in bomb.json()["error"]


# --- API key, privacy -----------------------------------------------------------------------------


def test_api_key_is_required_except_for_health_page_and_docs(bundle_dir: Path) -> None:
    with make_client(bundle_dir, api_key="s3cret") as client:
        assert client.get("/healthz").json()["auth_required"] is True
        for path in ("/healthz", "/v2/health/live", "/v2/health/ready", "/", "/docs", "/static/app.js"):
            assert client.get(path).status_code == 200, path
        assert client.get(V1).status_code == 401
        assert client.get(V2).status_code == 401
        denied = client.post("/predict", content=png_bytes())
        assert denied.status_code == 401 and "API key" in denied.json()["error"]
        assert denied.headers["www-authenticate"] == "Bearer"
        assert client.get(V1, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get(V1, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(V1, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get(V1, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = client.post("/predict", content=png_bytes(), headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200


def test_large_upload_never_touches_disk(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []
    for name in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        original = getattr(tempfile, name)

        def record(
            *args: object, _name: str = name, _original: object = original, **kwargs: object
        ) -> object:
            created.append(_name)
            return _original(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(tempfile, name, record)
    image = png_bytes((1300, 1300), seed=15)
    assert len(image) > 1024 * 1024  # python-multipart spools files over 1 MiB to disk by default
    assert client.post("/predict", files={"file": ("big.png", image, "image/png")}).status_code == 200
    assert client.post("/explain", files={"file": ("big.png", image, "image/png")}).status_code == 200
    assert created == []


def test_dicom_patient_data_is_never_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    pixels = np.random.default_rng(16).integers(0, 255, (30, 30), dtype=np.uint16)
    dicom = make_dicom(pixels, PatientName="Doe^Jane", PatientID="PID-4711")
    with caplog.at_level(logging.DEBUG):
        assert (
            client.post("/predict", files={"file": ("d.dcm", dicom, "application/dicom")}).status_code == 200
        )
        assert (
            client.post("/explain", files={"file": ("d.dcm", dicom, "application/dicom")}).status_code == 200
        )
        assert (
            client.post("/predict", files={"file": ("d.dcm", dicom[:-400], "application/dicom")}).status_code
            == 400
        )
    assert caplog.records  # something was logged, and none of it is patient data
    assert "Doe" not in caplog.text and "PID-4711" not in caplog.text


def test_settings_round_trip_through_environment(bundle_dir: Path) -> None:
    from covid_cxr.serving import Settings

    settings = Settings(bundle=bundle_dir, api_key="s3cret", batching=False, max_wait_ms=2.5, model_name="m")
    assert Settings.from_env(settings.to_env()) == settings
    assert settings.to_env()["COVID_CXR_SERVE_API_KEY"] == "s3cret"
    assert "s3cret" not in repr(settings)


def test_unexpected_errors_are_500_json_and_the_app_goes_on(bundle_dir: Path) -> None:
    client = make_client(bundle_dir)

    def boom() -> None:
        raise RuntimeError("bug")

    client.app.add_api_route("/boom", boom)
    with client:
        response = client.get("/boom")
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error (RuntimeError)"}
        assert client.get("/healthz").status_code == 200


def test_unknown_cam_method_is_refused_at_startup(bundle_dir: Path) -> None:
    from pydantic import ValidationError

    from covid_cxr.serving import Settings

    with pytest.raises(ValidationError, match="gradcam"):
        Settings(bundle=bundle_dir, cam_method="magic")


def test_serve_fails_fast_on_bad_settings_or_bundle(tmp_path: Path) -> None:
    from covid_cxr.errors import BundleError, ConfigError
    from covid_cxr.serving import serve

    with pytest.raises(ConfigError, match="max_pixels"):
        serve(tmp_path, max_pixels=0)
    with pytest.raises(BundleError, match="bundle.json"):
        serve(tmp_path)


def test_model_card_describes_each_training_source_in_words() -> None:
    from covid_cxr.serving.service import model_card

    source = {"path": "/data/radiography", "images": {"train": {"a": 3, "b": 4}, "test": {"a": 1}}}
    card = model_card({"training_data": [source, {"path": "/data/kermany"}]})
    assert card.training_data == (
        "radiography (train 7, test 1; /data/radiography); kermany (image counts not recorded; /data/kermany)"
    )
