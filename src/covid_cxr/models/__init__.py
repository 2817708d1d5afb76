"""Models: the backbone registry and factory, classification heads and the Classifier."""

from covid_cxr.models.heads import Head, build_head
from covid_cxr.models.registry import BACKBONES, Backbone, BackboneInfo, list_backbones, register_backbone
from covid_cxr.models.zoo import (
    Classifier,
    build_backbone,
    build_from_config,
    build_model,
    feature_shape,
    find_target_layer,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInfo",
    "Classifier",
    "Head",
    "build_backbone",
    "build_from_config",
    "build_head",
    "build_model",
    "feature_shape",
    "find_target_layer",
    "list_backbones",
    "register_backbone",
]
