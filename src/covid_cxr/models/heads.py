"""Classification heads built from a HeadConfig and sized from the backbone's feature map.

Poolings (Keras equivalents in brackets):
  gap           global average [GlobalAveragePooling2D]: C features at any image size
  avg4_flatten  AvgPool2d(4) then Flatten [AveragePooling2D((4, 4)) + Flatten, seeds 000/003]:
                C * floor(H/4) * floor(W/4) features (VGG16 at 224 px: 7x7 -> 1x1 -> 512)
  avg4          AvgPool2d(4) then the mean of what is left: C features at any image size, the
                same numbers as avg4_flatten whenever the pooled map is 1x1
  flatten       Flatten [Flatten, seeds 001/004]: C * H * W features
  none          the map must already be 1x1; it is flattened
A map smaller than 4x4 is pooled with a window of its own size (logged), where Keras would fail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from covid_cxr.config import HeadConfig
from covid_cxr.errors import ConfigError

log = logging.getLogger(__name__)

POOL_SIZE = 4
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
FeatureShape = tuple[int, int, int]


class Head(nn.Module):
    """Pooling -> hidden Dense/activation/dropout layers -> final Linear, returning logits.

    No softmax or sigmoid inside: the loss and the predictor apply it. A two-class head with
    ``output: sigmoid`` has a single logit, the score of class index 1 (Keras' binary head).
    """

    def __init__(self, pool: nn.Module, hidden: nn.Sequential, fc: nn.Linear) -> None:
        super().__init__()
        self.pool = pool
        self.hidden = hidden
        self.fc = fc

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (N, outputs), or the input of the final Linear when ``pre_logits``."""
        x = self.hidden(self.pool(features))
        return x if pre_logits else self.fc(x)


def num_outputs(output: str, num_classes: int) -> int:
    """Logits the final layer needs: 1 for a two-class sigmoid head, else one per class."""
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    return 1 if output == "sigmoid" and num_classes == 2 else num_classes


def build_head(cfg: HeadConfig, feature_shape: FeatureShape, num_classes: int) -> Head:
    """The head for a (C, H, W) feature map; its input size is derived from the map, never fixed."""
    pool, width = POOLINGS[cfg.pooling](feature_shape)
    if len(cfg.dropout) > len(cfg.hidden):
        raise ConfigError(
            f"model.head.dropout has {len(cfg.dropout)} rates for {len(cfg.hidden)} hidden layers"
        )
    rates = list(cfg.dropout) + [0.0] * (len(cfg.hidden) - len(cfg.dropout))
    layers: list[nn.Module] = []
    for units, rate in zip(cfg.hidden, rates, strict=True):
        layers += [_dense(width, units), ACTIVATIONS[cfg.activation]()]
        layers += [nn.Dropout(rate)] if rate > 0 else []
        width = units
    layers += [nn.Dropout(cfg.final_dropout)] if cfg.final_dropout > 0 else []
    return Head(pool, nn.Sequential(*layers), _dense(width, num_outputs(cfg.output, num_classes)))


def _dense(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer with Keras' Dense defaults (Glorot-uniform kernel, zero bias)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _window(height: int, width: int) -> int:
    """The average-pool window: 4, or the map's size when the map is smaller."""
    size = min(POOL_SIZE, height, width)
    if size < POOL_SIZE:
        log.debug(
            "feature map %dx%d is smaller than the 4x4 pool; pooling with %dx%d", height, width, size, size
        )
    return size


def _gap(shape: FeatureShape) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), shape[0]


def _avg4(shape: FeatureShape) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.AvgPool2d(_window(*shape[1:])), nn.AdaptiveAvgPool2d(1), nn.Flatten()), shape[0]


def _avg4_flatten(shape: FeatureShape) -> tuple[nn.Module, int]:
    channels, height, width = shape
    size = _window(height, width)
    return nn.Sequential(nn.AvgPool2d(size), nn.Flatten()), channels * (height // size) * (width // size)


def _flatten(shape: FeatureShape) -> tuple[nn.Module, int]:
    return nn.Flatten(), shape[0] * shape[1] * shape[2]


def _none(shape: FeatureShape) -> tuple[nn.Module, int]:
    if shape[1:] != (1, 1):
        raise ConfigError(
            f"model.head.pooling 'none' needs a 1x1 feature map, got {shape[1]}x{shape[2]}; "
            "use gap or flatten"
        )
    return nn.Flatten(), shape[0]


POOLINGS: dict[str, Callable[[FeatureShape], tuple[nn.Module, int]]] = {
    "gap": _gap,
    "avg4": _avg4,
    "avg4_flatten": _avg4_flatten,
    "flatten": _flatten,
    "none": _none,
}
