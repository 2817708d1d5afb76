"""Class activation maps (pytorch-grad-cam) on a classifier's torch model, at the original image's size.

Without a named layer the CAM uses the model's declared target layer, or, when the input is so small
that its map is coarser than ``MIN_CAM_SIDE`` pixels a side (EfficientNet-Lite0's last layer is 2x2 at
64 px), the last layer before it whose map is not: see ``default_layer``.

Each request runs inside ``with Method(model=..., target_layers=[...]) as cam:`` so the hooks are
released, with the model in eval mode and no parameter gradients; afterwards every module's
train/eval mode and every parameter's ``requires_grad`` and ``.grad`` are what they were.

Example:
    >>> predictor = covid_cxr.load_bundle("runs/demo/bundle")
    >>> result = explain(predictor, load_image("chest.png"), method="gradcam++")
    >>> Path("chest_panel.png").write_bytes(result.panel_png())

References: Selvaraju et al., "Grad-CAM", ICCV 2017; Gildenblat et al., pytorch-grad-cam.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from torch import nn

from covid_cxr.data.manifest import is_image_file
from covid_cxr.data.preprocess import normalize, prepare_with_box
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import ConfigError, CxrError
from covid_cxr.explain.overlay import blend, colorize, compose_panel, encode_png, to_original, to_rgb
from covid_cxr.models.heads import num_outputs
from covid_cxr.models.zoo import find_target_layer
from covid_cxr.predictor import Probabilities

if TYPE_CHECKING:
    from covid_cxr.predictor import Predictor

log = logging.getLogger(__name__)

Target = str | int | None
MIN_CAM_SIDE = 7  # the usual Grad-CAM map (ResNet-50 at 224 px); a 2x2 or 4x4 map cannot outline a lesion
_CHAINS = (nn.Sequential, nn.ModuleList)  # their children are whole stages
_LAYER_DEPTH = 4  # candidate layers: up to backbone.<a>.<b>.<c> (Lite0's blocks.blocks.<i>)
_LISTED = 25
_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str | None, int], str]] = (
    weakref.WeakKeyDictionary()
)
_PROBE_SIZE = 64


class GuidedGradCAM(BaseCAM):
    """Seed 003's "guided gradients" Grad-CAM: each channel's weight is the spatial mean of the gradients
    kept only where both gradient and activation are positive, ``mean((A > 0) * (dY/dA > 0) * dY/dA)``.

    Not Springenberg's guided backpropagation: only the channel weights change, as in the seed.
    """

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list[Any],
        activations: np.ndarray,
        grads: np.ndarray,
    ) -> np.ndarray:
        """Per-channel weights (N, K) from positive gradients at positive activations."""
        guided = np.where((activations > 0) & (grads > 0), grads, 0.0)
        return guided.mean(axis=tuple(range(2, guided.ndim)))


METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "guided": GuidedGradCAM,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


@dataclass(frozen=True)
class CamModel:
    """What a CAM needs from a classifier: its torch model (logits), preprocessing, class names and head.

    ``layer`` is the preferred target layer (None: the model's ``target_layer_name``, else the last Conv2d),
    used when no layer is named and refined by resolution (``default_layer``);
    ``lock`` serialises requests on the model (hooks and mode switches are not thread-safe).
    """

    model: nn.Module
    spec: Preprocess
    classes: list[str]
    output: str = "softmax"
    temperature: float = 1.0
    layer: str | None = None
    lock: AbstractContextManager[Any] = field(default_factory=threading.Lock)

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> CamModel:
        """The CAM view of a Predictor: its torch model, spec, classes, bundle target layer and lock."""
        info = predictor.info
        return cls(
            predictor.model,
            predictor.preprocess,
            list(predictor.classes),
            info["head"]["output"],
            float(info["temperature"]),
            info.get("target_layer"),
            predictor.lock,
        )


@dataclass(frozen=True)
class Explanation:
    """One explained image: probabilities, the explained class, and the heatmap at the original size.

    ``heatmap`` is float32 (H, W) in [0, 1]; ``overlay`` and ``panel`` (original | heatmap | overlay)
    are uint8 RGB.
    """

    probabilities: dict[str, float]
    target_class: str
    method: str
    layer: str
    heatmap: np.ndarray
    overlay: np.ndarray
    panel: np.ndarray

    def overlay_png(self) -> bytes:
        """The overlay as PNG bytes."""
        return encode_png(self.overlay)

    def panel_png(self) -> bytes:
        """The three-image panel as PNG bytes."""
        return encode_png(self.panel)


def explain(
    model: Predictor | CamModel,
    image: np.ndarray,
    method: str = "gradcam",
    target: Target = None,
    layer: str | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> Explanation:
    """Explain one decoded image (uint8, any size) for ``target`` (class name, index, None = predicted).

    ``layer`` names the target layer; None uses ``default_layer`` of the model at its input size.
    """
    subject = as_cam_model(model)
    probabilities, target_class, heat, layer_name = compute_heatmap(subject, image, method, target, layer)
    original = to_rgb(image)
    colored = colorize(heat, colormap)
    overlay = blend(original, colored, alpha)
    return Explanation(
        probabilities,
        target_class,
        method,
        layer_name,
        heat,
        overlay,
        compose_panel(original, colored, overlay),
    )


def compute_heatmap(
    model: Predictor | CamModel,
    image: np.ndarray,
    method: str = "gradcam",
    target: Target = None,
    layer: str | None = None,
) -> tuple[dict[str, float], str, np.ndarray, str]:
    """(probabilities, target class, float32 heatmap at the image's size in [0, 1], layer name)."""
    subject = as_cam_model(model)
    prepared, box = prepare_with_box(image, subject.spec)
    x = normalize(prepared, subject.spec).unsqueeze(0)
    with subject.lock:
        name, _ = cam_layer(subject, layer)
        probs = predict_probabilities(subject, x)[0]
        index = resolve_target(target, subject.classes, probs)
        cam = input_cams(subject, x, [index], method, name)[0]
    height, width = image.shape[:2]
    heat = to_original(cam, height, width, subject.spec.keep_aspect, box)
    return dict(zip(subject.classes, map(float, probs), strict=True)), subject.classes[index], heat, name


def input_cams(
    subject: CamModel,
    x: torch.Tensor,
    targets: Sequence[int],
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] at the model input's resolution for a preprocessed batch and class indices.

    The caller holds ``subject.lock`` when other threads may use the model.
    """
    cam_class = _method(method)
    name, module = cam_layer(subject, layer)
    single_logit = num_outputs(subject.output, len(subject.classes)) == 1
    wrap = BinaryClassifierOutputTarget if single_logit else ClassifierOutputTarget
    x = x.detach().to(_device(subject.model)).requires_grad_(True)  # gradients reach the layer, not weights
    with (
        isolated(subject.model),
        torch.enable_grad(),
        cam_class(model=subject.model, target_layers=[module]) as cam,
    ):
        try:
            cams = cam(input_tensor=x, targets=[wrap(int(t)) for t in targets])
        except IndexError as exc:  # BaseCAM.__exit__ would swallow it
            raise CxrError(f"{method} on layer {name}: no activations or gradients ({exc})") from exc
    return np.nan_to_num(np.asarray(cams, dtype=np.float32), nan=0.0)


def predict_probabilities(subject: CamModel, x: torch.Tensor) -> np.ndarray:
    """(N, C) probabilities of a preprocessed batch with the subject's head output and temperature."""
    probs = Probabilities(subject.model, len(subject.classes), subject.temperature, subject.output)
    with isolated(subject.model), torch.no_grad():
        return probs(x.to(_device(subject.model))).float().cpu().numpy()


def cam_layer(subject: CamModel, layer: str | None = None) -> tuple[str, nn.Module]:
    """The layer a CAM of ``subject`` uses: ``layer`` as named, else ``default_layer`` at the input size.

    The default is probed once per model, preferred layer and size (a forward pass), then remembered.
    """
    if layer:
        return resolve_layer(subject.model, layer)
    chosen = _DEFAULT_LAYERS.setdefault(subject.model, {})
    key = (subject.layer, subject.spec.size)
    if key not in chosen:
        chosen[key] = default_layer(subject.model, subject.layer, subject.spec.size)
    return resolve_layer(subject.model, chosen[key])


def default_layer(
    model: nn.Module, preferred: str | None = None, size: int | None = None, min_side: int = MIN_CAM_SIDE
) -> str:
    """The CAM layer when none is named: ``preferred`` (else ``resolve_layer``'s choice) when its map at
    ``size`` px (default ``model.image_size``) is at least ``min_side`` a side, else the last whole stage
    before it whose map is (if any).

    A whole stage is a child of an ``nn.Sequential`` or ``nn.ModuleList``, not a branch or half of a
    residual block. At a backbone's usual input size this is the declared layer; at 128 px
    EfficientNet-Lite0's 4x4 ``head`` gives way to the 8x8 ``blocks.blocks.10``, ResNet-50's
    ``layer4`` to ``layer3``.
    """
    name, _ = resolve_layer(model, preferred)
    sides = feature_sides(model, size)
    if name not in sides or min(sides[name]) >= min_side:
        return name
    modules, order = dict(model.named_modules()), list(sides)
    chains = [n for n in order[: order.index(name)] if isinstance(modules[n.rpartition(".")[0]], _CHAINS)]
    finer = [n for n in chains if min(sides[n]) >= min_side]
    if not finer:
        return name
    log.debug("CAM layer %s: %s is %dx%d at %s px", finer[-1], name, *sides[name], size)
    return finer[-1]


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The target layer: ``name``, else ``model.target_layer_name``, else the last Conv2d.

    A backbone-relative name (``features.18``, as the registry writes it) also works. Raises
    ConfigError listing the layers with a 4-D output when ``name`` is not a submodule.
    """
    name = name or getattr(model, "target_layer_name", None) or find_target_layer(model)
    modules = dict(model.named_modules())
    if name not in modules and f"backbone.{name}" in modules:
        name = f"backbone.{name}"
    if name not in modules or not name:
        candidates = layer_candidates(model)
        shown = candidates[-_LISTED:]
        more = "..., " if len(candidates) > len(shown) else ""
        raise ConfigError(
            f"no layer {name!r} in {type(model).__name__}; layers with a 4-D output: {more}{', '.join(shown)}"
        )
    return name, modules[name]


def layer_candidates(model: nn.Module) -> list[str]:
    """Names (at most four levels deep) of the modules with a 4-D output, in forward order."""
    return list(feature_sides(model))


def feature_sides(model: nn.Module, size: int | None = None) -> dict[str, tuple[int, int]]:
    """(height, width) of the 4-D output of each module at most four levels deep, in forward order.

    Found with one forward pass of zeros at ``size`` px (default ``model.image_size``, else 64); a
    module called more than once keeps the size of its last call.
    """
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    size = size or getattr(model, "image_size", _PROBE_SIZE)
    found: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                found[name] = (int(out.shape[-2]), int(out.shape[-1]))

        return hook

    named = [(n, m) for n, m in model.named_modules() if n and n.count(".") < _LAYER_DEPTH]
    hooks = [module.register_forward_hook(record(name)) for name, module in named]
    try:
        with isolated(model), torch.no_grad():
            model(torch.zeros(1, first.in_channels, size, size, device=_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return found


def resolve_target(target: Target, classes: Sequence[str], probabilities: np.ndarray) -> int:
    """Class index of ``target``: a class name, an index, or None for the most probable class."""
    if target is None:
        return int(np.argmax(probabilities))
    if isinstance(target, str) and target in classes:
        return list(classes).index(target)
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(classes):
        return target
    raise ConfigError(
        f"unknown target class {target!r}; use one of {', '.join(classes)} or an index 0..{len(classes) - 1}"
    )


def as_cam_model(model: Predictor | CamModel) -> CamModel:
    """A CamModel as it is, or the CAM view of a Predictor."""
    return model if isinstance(model, CamModel) else CamModel.from_predictor(model)


@contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Eval mode without parameter gradients; modes, ``requires_grad`` and ``.grad`` restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for p, flag, grad in params:
            p.requires_grad_(flag)
            p.grad = grad


def _method(name: str) -> type[BaseCAM]:
    """The CAM class registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown CAM method {name!r}; valid: {', '.join(METHODS)}") from None


def _device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    return next(model.parameters(), torch.empty(0)).device


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders replaced by their image files (sorted, not recursive)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if is_image_file(p))
        else:
            files.append(path)
    return files


def _unique_stem(stem: str, written: list[Path]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when an earlier image of this batch had the same name."""
    taken = {p.name for p in written}
    candidate, k = stem, 1
    while f"{candidate}_panel.png" in taken:
        k += 1
        candidate = f"{stem}-{k}"
    return candidate
