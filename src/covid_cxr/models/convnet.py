"""The seed-004 vanilla ConvNet (MachineCurve 2020): one conv block as the backbone."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from covid_cxr.models.registry import Backbone, register_backbone

CONVNET_FILTERS = 32


@register_backbone("convnet", target_layer="relu", default_size=50, min_size=8, imagenet=False)
def convnet(imagenet: bool) -> Backbone:
    """Conv2D(32, 3x3, relu) -> MaxPool(2) -> Dropout(0.5); the preset's head adds Flatten -> Dense 256.

    Weights use Keras' defaults (Glorot-uniform kernel, zero bias) as in the seed.
    """
    conv = nn.Conv2d(3, CONVNET_FILTERS, kernel_size=3)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    layers = OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.MaxPool2d(2), dropout=nn.Dropout(0.5))
    return Backbone(layers, num_features=CONVNET_FILTERS)
