"""torchvision backbones (weights API), cut before their classifier and registered by name.

Each module tree is the same with or without ImageNet weights, so a state dict saved from one
build always loads into another. Target layers are the last convolution's activated 4-D output,
the layer the seeds hand to Grad-CAM (Keras ``block5_conv3``, ``conv5_block3_out``, ``relu``,
``out_relu``, ``mixed10``).
"""

from __future__ import annotations

from collections import OrderedDict

import torchvision.models as tvm
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from covid_cxr.models.registry import Backbone, register_backbone

_CLASSIFIER_PARTS = ("AuxLogits", "avgpool", "dropout", "fc")


def _trunk(net: nn.Module) -> OrderedDict[str, nn.Module]:
    """The children of ``net`` in registration (= forward) order, without pooling and classifiers."""
    return OrderedDict((n, m) for n, m in net.named_children() if n not in _CLASSIFIER_PARTS)


@register_backbone("vgg16", target_layer="features.29", default_size=224)
def vgg16(imagenet: bool) -> Backbone:
    """VGG16 convolutional part (Keras ``include_top=False``): 512 channels, stride 32."""
    features = make_layers(cfgs["D"])
    if imagenet:
        state = tvm.VGG16_Weights.DEFAULT.get_state_dict(progress=False)
        features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        )
    else:  # torchvision's VGG initialisation, without building the 120M-parameter classifier
        for conv in (m for m in features if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    return Backbone(OrderedDict(features=features), num_features=features[-3].out_channels)


@register_backbone("resnet50", target_layer="layer4", default_size=224)
def resnet50(imagenet: bool) -> Backbone:
    """ResNet50 up to ``layer4``: 2048 channels, stride 32."""
    net = tvm.resnet50(weights=tvm.ResNet50_Weights.DEFAULT if imagenet else None)
    return Backbone(_trunk(net), num_features=net.fc.in_features)


@register_backbone("densenet121", target_layer="relu", default_size=224)
def densenet121(imagenet: bool) -> Backbone:
    """DenseNet121 features plus the final ReLU torchvision applies in ``forward``: 1024 channels."""
    net = tvm.densenet121(weights=tvm.DenseNet121_Weights.DEFAULT if imagenet else None)
    return Backbone(
        OrderedDict(features=net.features, relu=nn.ReLU()), num_features=net.classifier.in_features
    )


@register_backbone("mobilenet_v2", target_layer="features.18", default_size=224)
def mobilenet_v2(imagenet: bool) -> Backbone:
    """MobileNetV2 features (ending in the 1x1 conv to 1280 channels, ReLU6)."""
    net = tvm.mobilenet_v2(weights=tvm.MobileNet_V2_Weights.DEFAULT if imagenet else None)
    return Backbone(OrderedDict(features=net.features), num_features=net.last_channel)


@register_backbone("inception_v3", target_layer="Mixed_7c", default_size=299, min_size=75)
def inception_v3(imagenet: bool) -> Backbone:
    """InceptionV3 up to ``Mixed_7c`` (Keras ``mixed10``), aux classifier off: 2048 channels.

    torchvision's ``transform_input`` is left out so the module is the same whatever the weights;
    the preprocess spec alone decides the input scaling.
    """
    if imagenet:  # torchvision loads these weights with the aux classifier on; _trunk drops it
        net = tvm.inception_v3(weights=tvm.Inception_V3_Weights.DEFAULT)
    else:
        net = tvm.inception_v3(aux_logits=False, init_weights=True)
    return Backbone(_trunk(net), num_features=net.fc.in_features)


@register_backbone("efficientnet_b0", target_layer="features.8", default_size=224)
def efficientnet_b0(imagenet: bool) -> Backbone:
    """EfficientNet-B0 features (ending in the 1x1 conv to 1280 channels, SiLU)."""
    net = tvm.efficientnet_b0(weights=tvm.EfficientNet_B0_Weights.DEFAULT if imagenet else None)
    return Backbone(OrderedDict(features=net.features), num_features=net.classifier[1].in_features)
