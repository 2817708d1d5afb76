"""/predict, /explain and :explain carry the verdict (set, OOD, gate, abstain); :predict and v2 do not."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covid_cxr.bundle import load_bundle
from covid_cxr.serving import Settings, create_app
from tests.reliability.bundles import CLASSES, phantoms

VERDICT = {"prediction_set", "ood", "gate", "abstain", "abstain_reasons"}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(reliability_bundle: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(bundle=reliability_bundle, model_name="m")), raise_server_exceptions=False
    ) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    noise = np.random.default_rng(4).integers(0, 256, (128, 128), dtype=np.uint8)
    return {"phantom": _png(phantoms(1, 7)[0]), "noise": _png(noise)}


def test_predict_upload_carries_the_same_verdict_as_the_predictor(
    client: TestClient, reliability_bundle: Path, images: dict[str, bytes]
) -> None:
    predictor = load_bundle(reliability_bundle)
    for name, data in images.items():
        body = client.post("/predict", files={"file": (f"{name}.png", data, "image/png")}).json()
        want = predictor.predict(data)
        assert body["prediction_set"] == want.prediction_set
        assert body["ood"]["score"] == pytest.approx(want.ood["score"], rel=1e-4)
        assert body["ood"]["flagged"] is want.ood["flagged"]
        assert body["gate"] == want.gate and body["abstain_reasons"] == want.abstain_reasons
    noise = client.post("/predict", content=images["noise"]).json()
    assert noise["abstain"] is True and "not_frontal_chest" in noise["gate"]["reasons"]
    assert noise["ood"]["flagged"] is True


def test_explain_and_tf_explain_carry_the_verdict(client: TestClient, images: dict[str, bytes]) -> None:
    upload = client.post("/explain", content=images["noise"]).json()
    assert VERDICT <= set(upload) and upload["abstain"] is True
    b64 = base64.b64encode(images["noise"]).decode()
    (tf,) = client.post("/v1/models/m:explain", json={"instances": [{"b64": b64}]}).json()["explanations"]
    assert {k: tf[k] for k in VERDICT} == {k: upload[k] for k in VERDICT}


def test_tf_predict_and_kserve_answer_probabilities_only(
    client: TestClient, images: dict[str, bytes]
) -> None:
    b64 = base64.b64encode(images["noise"]).decode()
    body = client.post("/v1/models/m:predict", json={"instances": [{"b64": b64}]}).json()
    assert set(body) == {"predictions"} and len(body["predictions"][0]) == len(CLASSES)
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]}
    outputs = client.post("/v2/models/m/infer", json=v2).json()["outputs"]
    assert [(o["name"], o["shape"]) for o in outputs] == [("probabilities", [1, len(CLASSES)])]


def test_frontal_check_can_be_turned_off_and_old_bundles_say_so(
    plain_reliability_bundle: Path, images: dict[str, bytes]
) -> None:
    settings = Settings(bundle=plain_reliability_bundle, model_name="m", frontal_check=False)
    with TestClient(create_app(settings)) as c:
        body = c.post("/predict", content=images["phantom"]).json()
    assert body["gate"] == {"reasons": [], "unavailable": ["not_frontal_chest"]}
    assert body["ood"]["flagged"] is None and body["ood"]["note"] == "bundle has no OOD detector"
    assert body["prediction_set"] is None and body["abstain"] is False
