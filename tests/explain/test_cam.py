"""CAMs over every registered backbone: shapes at the original size, side effects, guided weights, layers."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from covid_cxr.bundle import load_bundle, write_bundle
from covid_cxr.config import HeadConfig, ModelConfig, RunConfig
from covid_cxr.data.images import decode_bytes
from covid_cxr.data.preprocess import prepare, preprocess
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import ConfigError
from covid_cxr.explain import CamModel, explain, explain_files
from covid_cxr.explain.cam import MIN_CAM_SIDE, input_cams, predict_probabilities
from covid_cxr.explain.overlay import content_box
from covid_cxr.models.registry import backbone_info, list_backbones
from covid_cxr.models.zoo import Classifier, build_model
from tests.explain.test_default_layer import map_side

CLASSES = ["normal", "covid", "viral"]
ORIGINAL = (97, 131)
SMOKE_METHODS = ["gradcam", "guided", "eigencam"]


@functools.cache
def zoo_subject(arch: str) -> CamModel:
    """A randomly initialised zoo model at its smallest test size (32 px, InceptionV3 75 px)."""
    torch.manual_seed(0)
    size = max(32, backbone_info(arch).min_size)
    model = build_model(arch, HeadConfig(), len(CLASSES), "none", image_size=size)
    return CamModel(model, Preprocess(size=size, normalize="imagenet"), CLASSES)


def convnet_subject(head: HeadConfig | None = None, classes: list[str] = CLASSES, size: int = 48) -> CamModel:
    """The seed-004 convnet with a flatten head, deterministic."""
    torch.manual_seed(1)
    head = head or HeadConfig(pooling="flatten", hidden=[16])
    model = build_model("convnet", head, len(classes), "none", image_size=size, in_chans=1)
    return CamModel(model, Preprocess(size=size, channels=1), classes, output=head.output)


def original_image(shape: tuple[int, ...] = ORIGINAL, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 image (structure at several scales, so CAMs are not flat)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8) + shape[2:], dtype=np.uint8)
    smooth = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth.astype(int) + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)


def forward_hooks(model: nn.Module) -> int:
    """Number of forward hooks registered anywhere in the model."""
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", SMOKE_METHODS)
@pytest.mark.parametrize("arch", list_backbones())
def test_heatmap_at_original_size_for_every_backbone(arch: str, method: str) -> None:
    subject = zoo_subject(arch)
    image = original_image()
    before = image.copy()
    result = explain(subject, image, method=method)
    assert result.heatmap.shape == ORIGINAL and result.heatmap.dtype == np.float32
    assert np.isfinite(result.heatmap).all()
    assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0
    assert result.overlay.shape == (*ORIGINAL, 3) and result.overlay.dtype == np.uint8
    assert result.panel.shape == (ORIGINAL[0], 3 * ORIGINAL[1], 3)
    assert min(map_side(subject.model, result.layer, subject.spec.size)) >= MIN_CAM_SIDE  # not 1x1 at 32 px
    assert result.target_class == max(result.probabilities, key=result.probabilities.get)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("arch", ["convnet", "densenet121", "inception_v3"])
def test_model_state_is_restored_and_hooks_released(arch: str) -> None:
    model = zoo_subject(arch).model
    model.train()
    model.head.eval()  # a mixed state must come back exactly
    frozen = next(model.backbone.parameters())
    frozen.requires_grad_(False)
    grad = torch.full_like(frozen, 0.5)
    frozen.grad = grad
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    try:
        explain(zoo_subject(arch), original_image(), method="gradcam")
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == flags
        assert frozen.grad is grad
        assert all(p.grad is None for p in model.parameters() if p is not frozen)
        assert forward_hooks(model) == 0
    finally:
        frozen.requires_grad_(True)
        frozen.grad = None
        model.eval()


def test_hooks_released_when_the_method_fails() -> None:
    subject = convnet_subject()
    with pytest.raises(ConfigError, match="unknown target class 'pneumonia'"):
        explain(subject, original_image(), target="pneumonia")
    assert forward_hooks(subject.model) == 0


def tiny_linear_cam_model() -> tuple[nn.Sequential, torch.Tensor]:
    """conv (no ReLU, so activations take both signs) -> GAP -> Linear with mixed-sign weights."""
    torch.manual_seed(3)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, -0.5], [-1.0, 1.0, 2.0, 0.3]]))
    return model.eval(), torch.randn(1, 1, 12, 12)


def reference_cam(model: nn.Sequential, x: torch.Tensor, target: int, guided: bool) -> np.ndarray:
    """The CAM formula in numpy: seed 003's guided weights or plain Grad-CAM, ReLU, then min-max scaling."""
    activations = model[0](x)
    (grads,) = torch.autograd.grad(model[1:](activations)[0, target], activations)
    a, g = activations[0].detach().numpy(), grads[0].numpy()
    kept = np.where((a > 0) & (g > 0), g, 0.0) if guided else g
    cam = np.maximum((kept.mean(axis=(1, 2))[:, None, None] * a).sum(axis=0), 0.0)
    for _ in range(2):  # pytorch-grad-cam scales per layer, then the layers' mean: (x - min) / (max + 1e-7)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    return cam


def test_guided_weights_use_positive_gradients_at_positive_activations() -> None:
    model, x = tiny_linear_cam_model()
    subject = CamModel(model, Preprocess(size=12, channels=1), ["a", "b"], layer="0")
    for target in (0, 1):
        guided = input_cams(subject, x, [target], "guided")[0]
        plain = input_cams(subject, x, [target], "gradcam")[0]
        np.testing.assert_allclose(guided, reference_cam(model, x, target, guided=True), atol=1e-5)
        np.testing.assert_allclose(plain, reference_cam(model, x, target, guided=False), atol=1e-5)
        assert np.abs(guided - plain).max() > 0.1  # the case really tells the two weightings apart


def test_named_layer_is_used() -> None:
    subject = zoo_subject("vgg16")
    default = explain(subject, original_image())  # conv3_3's ReLU: the last 8x8 map at 32 px
    named = explain(subject, original_image(), layer="backbone.features.22")  # conv4_3's ReLU, 4x4 at 32 px
    assert default.layer == "backbone.features.15" and named.layer == "backbone.features.22"
    assert named.heatmap.max() == pytest.approx(1.0)
    assert not np.allclose(named.heatmap, default.heatmap, atol=0.05)
    relative = explain(subject, original_image(), layer="features.22")  # as the registry names layers
    assert relative.layer == "backbone.features.22"
    np.testing.assert_array_equal(relative.heatmap, named.heatmap)


def test_unknown_layer_lists_candidates() -> None:
    with pytest.raises(ConfigError) as info:
        explain(zoo_subject("mobilenet_v2"), original_image(), layer="backbone.features.99")
    message = str(info.value)
    assert "'backbone.features.99'" in message
    assert "backbone.features.18" in message and "backbone.features.17" in message
    assert "head.fc" not in message  # only layers with a 4-D output are offered


def test_automatic_layer_is_the_last_conv() -> None:
    model, _ = tiny_linear_cam_model()
    subject = CamModel(model, Preprocess(size=12, channels=1), ["a", "b"])
    assert explain(subject, original_image((20, 30))).layer == "0"


def test_unknown_method_lists_the_registry() -> None:
    with pytest.raises(ConfigError, match="unknown CAM method 'gradcam2'.*gradcam\\+\\+.*guided"):
        explain(convnet_subject(), original_image(), method="gradcam2")


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam", "layercam", "hirescam", "scorecam"])
def test_other_methods_on_the_convnet(method: str) -> None:
    result = explain(convnet_subject(), original_image(), method=method)
    assert result.heatmap.shape == ORIGINAL and np.isfinite(result.heatmap).all()
    assert result.heatmap.max() == pytest.approx(1.0)


def test_target_by_name_index_or_prediction() -> None:
    subject = convnet_subject()
    image = original_image()
    x = preprocess(image, subject.spec).unsqueeze(0)
    probs = predict_probabilities(subject, x)[0]
    predicted = explain(subject, image)
    assert predicted.target_class == CLASSES[int(np.argmax(probs))]
    assert list(predicted.probabilities.values()) == pytest.approx(probs.tolist())
    by_name = explain(subject, image, target="viral")
    by_index = explain(subject, image, target=2)
    assert by_name.target_class == by_index.target_class == "viral"
    np.testing.assert_array_equal(by_name.heatmap, by_index.heatmap)
    with pytest.raises(ConfigError, match="0..2"):
        explain(subject, image, target=3)


def test_single_logit_sigmoid_head_explains_both_classes() -> None:
    subject = convnet_subject(HeadConfig(pooling="gap", output="sigmoid"), classes=["normal", "covid"])
    image = original_image()
    covid = explain(subject, image, target="covid")
    assert covid.target_class == "covid" and set(covid.probabilities) == {"normal", "covid"}
    assert sum(covid.probabilities.values()) == pytest.approx(1.0)
    model, x = tiny_linear_cam_model()
    logit = nn.Linear(4, 1)  # one logit, the score of "covid"
    with torch.no_grad():
        logit.weight.copy_(model[3].weight[:1])
    model[3] = logit
    binary = CamModel(model, Preprocess(size=12, channels=1), ["normal", "covid"], output="sigmoid")
    normal_cam, covid_cam = (input_cams(binary, x, [t], layer="0")[0] for t in (0, 1))
    # The two targets have opposite gradients, so their Grad-CAM supports do not overlap.
    np.testing.assert_array_equal(np.minimum(normal_cam, covid_cam), 0.0)
    assert normal_cam.max() == pytest.approx(1.0) and covid_cam.max() == pytest.approx(1.0)


def test_letterboxed_input_maps_back_to_the_original() -> None:
    spec = Preprocess(size=32, keep_aspect=True)
    for height, width in ((40, 100), (100, 40), (33, 33)):
        top, left, rows, cols = content_box(height, width, spec.size, spec.keep_aspect)
        prepared = prepare(np.full((height, width), 255, np.uint8), spec)[:, :, 0]
        rows_lit, cols_lit = np.nonzero(prepared)
        assert (rows_lit.min(), cols_lit.min(), rows_lit.max() + 1, cols_lit.max() + 1) == (
            top,
            left,
            top + rows,
            left + cols,
        )
    subject = CamModel(zoo_subject("convnet").model, spec, CLASSES)
    assert explain(subject, original_image((40, 100, 3))).heatmap.shape == (40, 100)


def test_overlay_panel_and_png() -> None:
    image = original_image()
    subject = convnet_subject()
    plain = explain(subject, image, alpha=0.0)
    full = explain(subject, image, alpha=1.0, colormap="hot")
    grey_rgb = np.repeat(image[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(plain.overlay, grey_rgb)
    np.testing.assert_array_equal(plain.panel[:, : ORIGINAL[1]], grey_rgb)
    np.testing.assert_array_equal(full.overlay, full.panel[:, ORIGINAL[1] : 2 * ORIGINAL[1]])
    np.testing.assert_array_equal(full.panel[:, 2 * ORIGINAL[1] :], full.overlay)
    jet = explain(subject, image, alpha=1.0, colormap="jet")
    assert not np.array_equal(jet.overlay, full.overlay)
    np.testing.assert_array_equal(decode_bytes(full.panel_png()), full.panel)
    np.testing.assert_array_equal(decode_bytes(full.overlay_png()), full.overlay)
    with pytest.raises(ConfigError, match="colormap 'rainbow'.*jet"):
        explain(subject, image, colormap="rainbow")
    with pytest.raises(ConfigError, match="alpha"):
        explain(subject, image, alpha=1.5)


def test_explain_files_writes_panels_and_lists_broken_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shape in (("a.png", (50, 70)), ("b.png", (64, 64, 3))):
        cv2.imwrite(str(folder / name), original_image(shape))
    (folder / "broken.png").write_bytes(b"not a png")
    other = tmp_path / "other" / "a.png"
    other.parent.mkdir()
    cv2.imwrite(str(other), original_image((30, 40)))
    done, failures = explain_files(convnet_subject(), [folder, other], tmp_path / "out", method="gradcam++")
    written = [p for item in done for p in (item.panel, item.overlay)]
    assert [p.name for p in written] == [
        "a_panel.png",
        "a_overlay.png",
        "b_panel.png",
        "b_overlay.png",
        "a-2_panel.png",
        "a-2_overlay.png",
    ]
    assert decode_bytes((tmp_path / "out" / "a_overlay.png").read_bytes()).shape == (50, 70, 3)
    assert decode_bytes((tmp_path / "out" / "a-2_overlay.png").read_bytes()).shape == (30, 40, 3)
    assert list(failures) == [str(folder / "broken.png")]


@pytest.fixture(scope="module")
def predictor_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, Path]:
    spec = Preprocess(size=40, channels=1, normalize="unit")
    head = HeadConfig(pooling="flatten", hidden=[8])
    torch.manual_seed(5)
    model = build_model("convnet", head, 3, image_size=40, in_chans=1).eval()
    config = RunConfig(name="cam", preprocess=spec, model=ModelConfig(arch="convnet", head=head))
    out = tmp_path_factory.mktemp("run") / "bundle"
    write_bundle(out, model, config, CLASSES, spec, {}, "fp", temperature=2.0, export_onnx=False)
    return model, out


def test_explain_with_a_loaded_bundle_is_thread_safe(predictor_bundle: tuple[Classifier, Path]) -> None:
    _, path = predictor_bundle
    predictor = load_bundle(path, backend="torch")
    images = [original_image((60 + i, 50), seed=i) for i in range(4)]
    serial = [explain(predictor, im, method="gradcam") for im in images]
    assert serial[0].layer == predictor.info["target_layer"] == "backbone.relu"
    for result, probs in zip(serial, predictor.predict_proba(images), strict=True):
        assert list(result.probabilities.values()) == pytest.approx(probs.tolist(), abs=1e-6)
    with ThreadPoolExecutor(4) as pool:  # explanations and predictions interleaved on one model
        explained = [pool.submit(explain, predictor, im) for im in images * 3]
        predicted = [pool.submit(predictor.predict_proba, [im]) for im in images * 3]
    for i, (result, probs) in enumerate(zip(explained, predicted, strict=True)):
        np.testing.assert_array_equal(result.result().heatmap, serial[i % 4].heatmap)
        np.testing.assert_allclose(probs.result()[0], list(serial[i % 4].probabilities.values()), atol=1e-6)
    assert forward_hooks(predictor.model) == 0
