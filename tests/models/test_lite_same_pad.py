"""EfficientNet-Lite0's 'same' convolutions: upstream's numbers, and an ONNX graph ONNX Runtime can fuse."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

from covid_cxr.bundle import MODEL_ONNX, write_bundle
from covid_cxr.config import ModelConfig, RunConfig
from covid_cxr.data.spec import Preprocess
from covid_cxr.models.lite import SamePadConv2d
from covid_cxr.models.zoo import build_model


@pytest.mark.parametrize("size", [31, 32, 33])
@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_same_pad_conv_matches_upstream(size: int, kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    upstream = Conv2dDynamicSamePadding(4, 6, kernel, stride=stride, groups=2)
    ours = SamePadConv2d(4, 6, kernel, stride=stride, groups=2)
    ours.load_state_dict(upstream.state_dict())
    x = torch.randn(2, 4, size, size)
    torch.testing.assert_close(ours(x), upstream(x), rtol=0, atol=1e-6)
    assert ours(x).shape[-1] == -(-size // stride)


def test_lite0_uses_it_for_every_convolution() -> None:
    model = build_model("efficientnet_lite0", None, 3, image_size=32)
    convs = [m for m in model.backbone.modules() if isinstance(m, Conv2dDynamicSamePadding)]
    assert convs and all(type(m) is SamePadConv2d for m in convs)


def test_onnx_export_has_no_pad_left_after_onnx_runtime_optimisation(tmp_path: Path) -> None:
    spec = Preprocess(size=32, channels=3, normalize="imagenet")
    model = build_model("efficientnet_lite0", None, 3, image_size=32).eval()
    config = RunConfig(name="lite", preprocess=spec, model=ModelConfig(arch="efficientnet_lite0"))
    bundle = write_bundle(tmp_path / "bundle", model, config, ["a", "b", "c"], spec, {}, "test")
    exported = {node.op_type for node in onnx.load(str(bundle / MODEL_ONNX)).graph.node}
    assert "Shape" not in exported  # the pads are constants, not computed from the input's shape
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(bundle / MODEL_ONNX), options, providers=["CPUExecutionProvider"])
    optimised = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert "Pad" not in optimised and {"Conv", "FusedConv"} & set(optimised)
