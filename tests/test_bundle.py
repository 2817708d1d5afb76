"""Bundle writing and loading: contents, round trip, atomic replacement and every corruption case."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from covid_cxr.bundle import load_bundle, write_bundle
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.images import load_image
from covid_cxr.data.manifest import sha256_file
from covid_cxr.data.preprocess import preprocess
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError
from covid_cxr.models.zoo import Classifier, build_model

CLASSES = ["covid", "normal", "pneumonia"]
SPEC = Preprocess(size=32, channels=1, normalize="dataset", mean=(0.4,), std=(0.2,))
HEAD = HeadConfig(pooling="flatten", hidden=[16])


def tiny_config(head: HeadConfig = HEAD, spec: Preprocess = SPEC) -> RunConfig:
    """A RunConfig for the seed-004 convnet at 32 px."""
    return RunConfig(name="tiny", preprocess=spec, model=ModelConfig(arch="convnet", head=head))


def tiny_model(
    head: HeadConfig = HEAD, num_classes: int = 3, spec: Preprocess = SPEC, seed: int = 0
) -> Classifier:
    """A randomly initialised convnet in eval mode, deterministic for a seed."""
    torch.manual_seed(seed)
    return build_model("convnet", head, num_classes, image_size=spec.size, in_chans=spec.channels).eval()


def write_tiny(
    out: Path,
    model: Classifier,
    temperature: float = 1.0,
    head: HeadConfig = HEAD,
    classes: list[str] = CLASSES,
    export_onnx: bool = True,
) -> Path:
    """write_bundle with the tiny config and a small metrics summary."""
    return write_bundle(
        out,
        model,
        tiny_config(head),
        classes,
        SPEC,
        {"accuracy": np.float64(0.75)},
        "fingerprint-123",
        temperature=temperature,
        export_onnx=export_onnx,
    )


def image_files(folder: Path, count: int = 4) -> list[Path]:
    """Random grey and RGB PNGs of different sizes."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        shape = (40 + 3 * i, 50 - 2 * i) if i % 2 == 0 else (45, 36, 3)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def reference_probs(model: Classifier, paths: list[Path], temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities of the in-memory model with the same preprocessing."""
    x = torch.stack([preprocess(load_image(p), SPEC) for p in paths])
    with torch.no_grad():
        return torch.softmax(model.eval()(x) / temperature, dim=1).numpy()


@pytest.fixture(scope="module")
def model() -> Classifier:
    return tiny_model()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, model: Classifier) -> Path:
    return write_tiny(tmp_path_factory.mktemp("run") / "bundle", model)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return image_files(tmp_path_factory.mktemp("images"))


def test_bundle_folder_holds_exactly_the_three_files(bundle: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "model.onnx", "model.pt"]
    assert [p.name for p in bundle.parent.iterdir()] == ["bundle"]


def test_bundle_json_describes_the_model(bundle: Path, model: Classifier) -> None:
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["format_version"] == "1"
    assert info["class_names"] == CLASSES
    assert info["arch"] == "convnet"
    assert HeadConfig.model_validate(info["head"]) == HEAD
    assert Preprocess.model_validate(info["preprocess"]) == SPEC
    assert info["preprocess"]["mean"] == [0.4] and info["preprocess"]["std"] == [0.2]
    assert info["target_layer"] == model.target_layer_name
    assert info["temperature"] == 1.0
    assert info["metrics"] == {"accuracy": 0.75}
    assert info["data_fingerprint"] == "fingerprint-123"
    assert info["intended_use"] == "research only, not for diagnosis"
    created = datetime.fromisoformat(info["created"])
    assert created.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 3600
    assert info["files"] == {name: sha256_file(bundle / name) for name in ("model.pt", "model.onnx")}


def test_onnx_file_has_dynamic_batch_and_opset_17(bundle: Path) -> None:
    graph = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(graph)
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]


def test_model_pt_is_the_state_dict(bundle: Path, model: Classifier) -> None:
    state = torch.load(bundle / "model.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_round_trip_matches_in_memory_model(
    bundle: Path, model: Classifier, images: list[Path], backend: str
) -> None:
    predictor = load_bundle(bundle, backend=backend)
    assert predictor.backend == backend
    assert predictor.classes == CLASSES
    assert predictor.preprocess == SPEC
    got = predictor.predict_proba(images, batch_size=3)
    assert got.shape == (len(images), 3)
    np.testing.assert_allclose(got, reference_probs(model, images), atol=1e-4)


def test_auto_backend_prefers_onnx(bundle: Path) -> None:
    assert load_bundle(bundle).backend == "onnx"


def test_without_onnx_only_torch_is_available(tmp_path: Path, model: Classifier, images: list[Path]) -> None:
    out = write_tiny(tmp_path / "bundle", model, export_onnx=False)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.pt"]
    predictor = load_bundle(out)
    assert predictor.backend == "torch"
    np.testing.assert_allclose(predictor.predict_proba(images), reference_probs(model, images), atol=1e-4)
    with pytest.raises(BundleError, match="no model.onnx"):
        load_bundle(out, backend="onnx")


def test_writing_leaves_the_callers_model_untouched(tmp_path: Path) -> None:
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    write_tiny(tmp_path / "bundle", model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rewriting_replaces_the_bundle_atomically(
    tmp_path: Path, model: Classifier, images: list[Path]
) -> None:
    out = tmp_path / "bundle"
    write_tiny(out, model)
    other = tiny_model(num_classes=2, seed=1)
    write_tiny(out, other, classes=["normal", "covid"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.onnx", "model.pt"]
    predictor = load_bundle(out)
    assert predictor.classes == ["normal", "covid"]
    np.testing.assert_allclose(predictor.predict_proba(images), reference_probs(other, images), atol=1e-4)


def test_failed_write_keeps_the_old_bundle_and_no_temp_folder(tmp_path: Path, model: Classifier) -> None:
    out = write_tiny(tmp_path / "bundle", model)
    old = (out / "bundle.json").read_text()
    with pytest.raises(BundleError, match="weights do not fit"):
        write_tiny(out, model, classes=["a", "b", "c", "d"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert (out / "bundle.json").read_text() == old


def _delete(folder: Path, name: str) -> None:
    (folder / name).unlink()


def _write_json(folder: Path, text: str) -> None:
    (folder / "bundle.json").write_text(text)


def _edit_json(folder: Path, **changes: object) -> None:
    path = folder / "bundle.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def _drop_key(folder: Path, key: str) -> None:
    path = folder / "bundle.json"
    info = json.loads(path.read_text())
    del info[key]
    path.write_text(json.dumps(info))


def _flip_byte(folder: Path, name: str) -> None:
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(data))


def _garbage_with_matching_hash(folder: Path, name: str) -> None:
    (folder / name).write_bytes(b"not a model file")
    info = json.loads((folder / "bundle.json").read_text())
    _edit_json(folder, files={**info["files"], name: sha256_file(folder / name)})


CORRUPTIONS = {
    "missing model.pt": (lambda f: _delete(f, "model.pt"), r"model\.pt: missing"),
    "missing model.onnx": (lambda f: _delete(f, "model.onnx"), r"model\.onnx: missing"),
    "missing bundle.json": (lambda f: _delete(f, "bundle.json"), r"bundle\.json: missing"),
    "garbage bundle.json": (lambda f: _write_json(f, "{not json"), r"bundle\.json: not valid JSON"),
    "json array": (lambda f: _write_json(f, "[1, 2]"), r"bundle\.json: expected a JSON object"),
    "format 99": (lambda f: _edit_json(f, format_version="99"), r"bundle\.json: unknown format_version '99'"),
    "no class names": (lambda f: _drop_key(f, "class_names"), r"bundle\.json: missing key class_names"),
    "tampered model.pt": (lambda f: _flip_byte(f, "model.pt"), r"model\.pt: sha256 mismatch"),
    "tampered model.onnx": (lambda f: _flip_byte(f, "model.onnx"), r"model\.onnx: sha256 mismatch"),
    "unreadable model.pt": (
        lambda f: _garbage_with_matching_hash(f, "model.pt"),
        r"model\.pt: not a readable state dict",
    ),
    "unreadable model.onnx": (
        lambda f: _garbage_with_matching_hash(f, "model.onnx"),
        r"model\.onnx: ONNX Runtime cannot load it",
    ),
    "zero temperature": (
        lambda f: _edit_json(f, temperature=0),
        r"bundle\.json: temperature: Input should be greater than 0",
    ),
    "wrong class count": (lambda f: _edit_json(f, class_names=["a", "b"]), r"model\.pt: weights do not fit"),
    "unknown arch": (lambda f: _edit_json(f, arch="resnet9000"), r"bundle\.json: cannot build 'resnet9000'"),
    "bad head": (
        lambda f: _edit_json(f, head={"pooling": "max"}),
        r"bundle\.json: head\.pooling: Input should be",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_bundle_raises_bundle_error_naming_it(tmp_path: Path, bundle: Path, case: str) -> None:
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    corrupt, message = CORRUPTIONS[case]
    corrupt(copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_missing_folder_raises_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle folder not found"):
        load_bundle(tmp_path / "nowhere")


def test_mobilenet_rgb_round_trip_on_both_backends(tmp_path: Path, images: list[Path]) -> None:
    spec = Preprocess(size=32, channels=3, normalize="imagenet")
    config = RunConfig(preprocess=spec, model=ModelConfig(arch="mobilenet_v2"))
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", config.model.head, 3, image_size=32).eval()
    out = write_bundle(tmp_path / "bundle", model, config, CLASSES, spec, {}, "fp")
    x = torch.stack([preprocess(load_image(p), spec) for p in images])
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    for backend in ("onnx", "torch"):
        np.testing.assert_allclose(
            load_bundle(out, backend=backend).predict_proba(images), expected, atol=1e-4
        )
