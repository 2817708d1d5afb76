"""The backbone registry: one decorator fills BACKBONES, one lookup names the valid choices."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class Backbone(nn.Sequential):
    """A feature extractor: ``forward_features(x)`` gives an (N, C, H, W) map with C = ``num_features``.

    Its children are named so that ``target_layer_name`` (the Grad-CAM layer, relative to the
    backbone) is a path such as ``features.29`` or ``layer4``.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], num_features: int) -> None:
        super().__init__(layers)
        self.num_features = num_features
        self.target_layer_name = ""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 4-D feature map before any pooling."""
        return self(x)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode, keeping frozen BatchNorm layers (no trainable parameter) in eval mode."""
        super().train(mode)
        for module in self.modules():
            params = list(module.parameters(recurse=False))
            if (
                mode
                and isinstance(module, _BatchNorm)
                and params
                and not any(p.requires_grad for p in params)
            ):
                module.eval()
        return self


BackboneFactory = Callable[[bool], Backbone]


@dataclass(frozen=True)
class BackboneInfo:
    """Registry metadata: how to build a backbone and what it expects."""

    name: str
    factory: BackboneFactory
    target_layer: str
    default_size: int
    min_size: int = 32
    imagenet: bool = True


BACKBONES: dict[str, BackboneInfo] = {}


def register_backbone(
    name: str, *, target_layer: str, default_size: int, min_size: int = 32, imagenet: bool = True
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding ``factory(imagenet: bool) -> Backbone`` to BACKBONES under ``name``."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = BackboneInfo(name, factory, target_layer, default_size, min_size, imagenet)
        return factory

    return wrap


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(BACKBONES)


def backbone_info(name: str) -> BackboneInfo:
    """Registry entry for ``name``; ValueError listing the valid names when unknown."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(list_backbones())}") from None
