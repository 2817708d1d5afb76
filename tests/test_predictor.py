"""Predictor: both backends, dynamic batch, temperature, sigmoid heads, input kinds, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covid_cxr.bundle import load_bundle
from covid_cxr.data.images import load_image
from covid_cxr.data.preprocess import preprocess
from covid_cxr.errors import ImageError
from covid_cxr.models.zoo import Classifier
from covid_cxr.predictor import Prediction, Predictor
from tests.test_bundle import CLASSES, HEAD, SPEC, image_files, tiny_model, write_tiny

BACKENDS = ["onnx", "torch"]


@pytest.fixture(scope="module")
def model() -> Classifier:
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, model: Classifier) -> Path:
    return write_tiny(tmp_path_factory.mktemp("run") / "bundle", model)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return image_files(tmp_path_factory.mktemp("images"), count=5)


@pytest.fixture(scope="module")
def batch(images: list[Path]) -> torch.Tensor:
    return torch.stack([preprocess(load_image(p), SPEC) for p in images])


def logits(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("size", [1, 5])
def test_onnx_takes_any_batch_size(bundle: Path, model: Classifier, batch: torch.Tensor, size: int) -> None:
    predictor = load_bundle(bundle, backend="onnx")
    got = predictor.predict_tensor(batch[:size])
    assert got.shape == (size, len(CLASSES))
    np.testing.assert_allclose(got, torch.softmax(logits(model, batch[:size]), 1).numpy(), atol=1e-4)


def test_backends_agree_on_tensors(bundle: Path, batch: torch.Tensor) -> None:
    onnx_probs = load_bundle(bundle, backend="onnx").predict_tensor(batch)
    torch_probs = load_bundle(bundle, backend="torch").predict_tensor(batch.numpy())
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)
    np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_two_flattens_the_probabilities(
    tmp_path: Path, bundle: Path, model: Classifier, batch: torch.Tensor, backend: str
) -> None:
    hot = write_tiny(tmp_path / "bundle", model, temperature=2.0)
    sharp = load_bundle(bundle, backend=backend).predict_tensor(batch)
    flat = load_bundle(hot, backend=backend).predict_tensor(batch)
    np.testing.assert_allclose(flat, torch.softmax(logits(model, batch) / 2.0, 1).numpy(), atol=1e-4)
    assert (flat.max(axis=1) < sharp.max(axis=1)).all()
    assert (flat.argmax(axis=1) == sharp.argmax(axis=1)).all()
    entropy = lambda p: -(p * np.log(p)).sum(axis=1)  # noqa: E731
    assert (entropy(flat) > entropy(sharp)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_logit_sigmoid_head_gives_two_columns(tmp_path: Path, batch: torch.Tensor, backend: str) -> None:
    head = HEAD.model_copy(update={"output": "sigmoid"})
    model = tiny_model(head=head, num_classes=2, seed=5)
    assert logits(model, batch).shape == (len(batch), 1)
    out = write_tiny(tmp_path / "bundle", model, temperature=1.5, head=head, classes=["normal", "covid"])
    got = load_bundle(out, backend=backend).predict_tensor(batch)
    p = torch.sigmoid(logits(model, batch)[:, 0] / 1.5).numpy()
    assert got.shape == (len(batch), 2)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], p, atol=1e-4)


def test_paths_bytes_and_arrays_give_the_same_probabilities(bundle: Path, images: list[Path]) -> None:
    predictor = load_bundle(bundle)
    from_paths = predictor.predict_proba([str(p) for p in images])
    from_bytes = predictor.predict_proba([p.read_bytes() for p in images], batch_size=2)
    from_arrays = predictor.predict_proba([load_image(p) for p in images], batch_size=1)
    np.testing.assert_allclose(from_bytes, from_paths, atol=1e-6)
    np.testing.assert_allclose(from_arrays, from_paths, atol=1e-6)


def test_predict_files_reports_each_file(bundle: Path, images: list[Path], tmp_path: Path) -> None:
    predictor = load_bundle(bundle)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    results, failures = predictor.predict_files([images[0], broken, *images[1:]], batch_size=2)
    probs = predictor.predict_proba(images)
    assert [r.path for r in results] == [str(p) for p in images]
    assert list(failures) == [str(broken)] and "not an image" in failures[str(broken)]
    for result, expected in zip(results, probs, strict=True):
        assert result.classes == CLASSES
        np.testing.assert_allclose(list(result.probabilities.values()), expected, atol=1e-7)
        assert result.label == CLASSES[int(np.argmax(expected))] == result.to_dict()["predicted"]


def test_one_image_gives_one_labelled_result(bundle: Path, images: list[Path]) -> None:
    predictor = load_bundle(bundle)
    grey = load_image(images[0])
    expected = predictor.predict_proba([grey])[0]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3): one image, not a batch of H
    for single in (rgb, grey, str(images[0]), images[0].read_bytes(), Image.fromarray(rgb)):
        result = predictor.predict(single)
        assert isinstance(result, Prediction), type(single)
        np.testing.assert_allclose(list(result.probabilities.values()), expected, atol=1e-6)
        assert result.top == (result.label, result.score)
        assert result.label == CLASSES[int(np.argmax(expected))]
    assert result.path is None and predictor.predict(images[0]).path == str(images[0])
    listed = predictor.predict([rgb, Image.fromarray(grey)])
    assert isinstance(listed, list) and [r.label for r in listed] == [result.label] * 2
    assert predictor.predict_proba(rgb).shape == (1, len(CLASSES))


def test_an_ambiguous_array_is_refused(bundle: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot tell one image from a batch.*\(32, 32, 7\)"):
        load_bundle(bundle).predict(np.zeros((32, 32, 7), np.uint8))


def test_empty_input_gives_an_empty_result(bundle: Path) -> None:
    assert load_bundle(bundle).predict_proba([]).shape == (0, len(CLASSES))


def test_bad_inputs_raise_clear_errors(bundle: Path, tmp_path: Path) -> None:
    predictor = load_bundle(bundle)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="broken.png"):
        predictor.predict_proba([broken])
    with pytest.raises(TypeError, match="int"):
        predictor.predict_proba([42])
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        predictor.predict_tensor(np.zeros((2, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="backend"):
        load_bundle(bundle, backend="tensorrt")


def test_torch_backend_is_thread_safe_and_in_eval_mode(bundle: Path, images: list[Path]) -> None:
    predictor = load_bundle(bundle, backend="torch")
    assert isinstance(predictor, Predictor) and not predictor.model.training
    expected = predictor.predict_proba(images)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: predictor.predict_proba(images, batch_size=2), range(8)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not predictor.model.training
