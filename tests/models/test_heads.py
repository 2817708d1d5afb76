"""Heads from a HeadConfig: input sizes from the feature map, Keras parameter counts, outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covid_cxr.config import HeadConfig
from covid_cxr.errors import ConfigError
from covid_cxr.models.heads import build_head


def dense(inputs: int, units: int) -> int:
    """Parameters of a Keras Dense layer: kernel plus bias."""
    return inputs * units + units


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def features(shape: tuple[int, int, int], n: int = 2) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(0))


def test_seed_000_vgg16_head_has_the_keras_parameter_count():
    head = build_head(HeadConfig(pooling="avg4_flatten", hidden=[64]), (512, 7, 7), 3)
    assert [m.weight.numel() + m.bias.numel() for m in head.modules() if isinstance(m, nn.Linear)] == [
        32_832,
        195,
    ]
    assert head(features((512, 7, 7))).shape == (2, 3)


def test_seed_003_inception_head_at_256_px_has_the_keras_parameter_count():
    head = build_head(HeadConfig(pooling="avg4_flatten", hidden=[64], dropout=[0.5]), (2048, 6, 6), 3)
    assert params(head) == 131_136 + 195
    assert head(features((2048, 6, 6))).shape == (2, 3)


@pytest.mark.parametrize(
    ("pooling", "shape", "inputs"),
    [
        ("gap", (32, 5, 7), 32),
        ("flatten", (32, 5, 7), 32 * 5 * 7),
        ("avg4_flatten", (32, 7, 7), 32),
        ("avg4_flatten", (32, 8, 13), 32 * 2 * 3),
        ("avg4", (32, 8, 13), 32),
        ("avg4_flatten", (32, 2, 2), 32),
        ("none", (32, 1, 1), 32),
    ],
)
def test_input_size_follows_the_feature_map(pooling, shape, inputs):
    head = build_head(HeadConfig(pooling=pooling), shape, 3)
    assert head.fc.in_features == inputs
    assert head(features(shape)).shape == (2, 3)


def test_avg4_equals_avg4_flatten_when_the_pooled_map_is_one_cell():
    x = features((16, 7, 7))
    a = build_head(HeadConfig(pooling="avg4"), (16, 7, 7), 3)
    b = build_head(HeadConfig(pooling="avg4_flatten"), (16, 7, 7), 3)
    assert torch.allclose(a.pool(x), b.pool(x))
    assert torch.allclose(b.pool(x), x[:, :, :4, :4].mean(dim=(2, 3)))


def test_pooling_none_needs_a_one_cell_map():
    with pytest.raises(ConfigError, match="1x1 feature map, got 7x7"):
        build_head(HeadConfig(pooling="none"), (512, 7, 7), 3)


@pytest.mark.parametrize(
    ("output", "classes", "logits"), [("sigmoid", 2, 1), ("sigmoid", 4, 4), ("softmax", 2, 2)]
)
def test_number_of_logits(output, classes, logits):
    head = build_head(HeadConfig(output=output), (8, 3, 3), classes)
    assert head(features((8, 3, 3))).shape == (2, logits)


def test_logits_are_not_probabilities():
    head = build_head(HeadConfig(hidden=[16]), (8, 3, 3), 3)
    assert not any(isinstance(m, (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)) for m in head.modules())


def test_hidden_layers_activation_and_dropout():
    head = build_head(
        HeadConfig(hidden=[512, 128, 64, 32], dropout=[0.7, 0.5], final_dropout=0.1, activation="gelu"),
        (1280, 7, 7),
        3,
    )
    assert params(head) == dense(1280, 512) + dense(512, 128) + dense(128, 64) + dense(64, 32) + dense(32, 3)
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.7, 0.5, 0.1]
    assert sum(isinstance(m, nn.GELU) for m in head.modules()) == 4
    assert all(torch.count_nonzero(m.bias) == 0 for m in head.modules() if isinstance(m, nn.Linear))


def test_more_dropout_rates_than_hidden_layers():
    with pytest.raises(ConfigError, match="2 rates for 1 hidden layers"):
        build_head(HeadConfig(hidden=[8], dropout=[0.1, 0.2]), (8, 3, 3), 3)


def test_one_class_is_refused():
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_head(HeadConfig(), (8, 3, 3), 1)
