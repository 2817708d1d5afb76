"""The backbone registry and model factory, driven by list_backbones()."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from covid_cxr.config import HeadConfig
from covid_cxr.errors import ConfigError
from covid_cxr.models import (
    BACKBONES,
    Classifier,
    build_backbone,
    build_model,
    feature_shape,
    find_target_layer,
    list_backbones,
)
from covid_cxr.models.lite import LITE0_SHA256_PREFIX, lite0_weights_path, load_lite0_state

HEAD = HeadConfig(pooling="gap", hidden=[8], dropout=[0.1])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine, OpenMP spinning makes two threads ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_size(arch: str) -> int:
    """64 px, or the architecture's minimum rounded up (inception_v3 needs 75)."""
    return max(64, BACKBONES[arch].min_size + 5)


def batch(arch: str, channels: int = 3) -> torch.Tensor:
    size = tiny_size(arch)
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))


def test_registry_lists_every_seed_architecture():
    expected = {
        "vgg16",
        "resnet50",
        "densenet121",
        "mobilenet_v2",
        "inception_v3",
        "efficientnet_b0",
        "efficientnet_lite0",
        "convnet",
    }
    assert set(list_backbones()) == expected


def test_unknown_architecture_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown architecture 'resnet18'.*densenet121.*vgg16"):
        build_model("resnet18", HEAD, 3)


@pytest.mark.parametrize("arch", list_backbones())
def test_forward_and_gradients_reach_every_parameter(arch):
    model = build_model(arch, HEAD, 3, image_size=tiny_size(arch))
    x = batch(arch)
    before = x.clone()
    logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    assert torch.equal(x, before), "the caller's input was modified"
    logits.logsumexp(dim=1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.head.parameters())


@pytest.mark.parametrize("arch", list_backbones())
def test_freeze_all_trains_only_the_head_and_keeps_batchnorm_statistics(arch):
    model = build_model(arch, HEAD, 3, freeze="all", image_size=tiny_size(arch))
    stats = {n: b.clone() for n, b in model.backbone.named_buffers() if "running" in n}
    model.train()
    model(batch(arch)).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(torch.equal(b, stats[n]) for n, b in model.backbone.named_buffers() if n in stats)


@pytest.mark.parametrize("arch", list_backbones())
def test_declared_target_layer_is_the_last_convolution_or_after_it(arch):
    model = build_model(arch, HEAD, 3, image_size=tiny_size(arch)).eval()
    names = [name for name, _ in model.named_modules()]
    target, last_conv = model.target_layer_name, f"backbone.{find_target_layer(model.backbone)}"
    assert target in names
    assert (
        target == last_conv
        or last_conv.startswith(f"{target}.")
        or names.index(target) > names.index(last_conv)
    )
    seen = []
    handle = model.target_layer().register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(batch(arch))
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][0] == 2


@pytest.mark.parametrize("arch", list_backbones())
def test_feature_shape_matches_a_real_forward(arch):
    backbone = build_backbone(arch).eval()
    x = batch(arch)
    with torch.no_grad():
        real = backbone.forward_features(x).shape
    assert feature_shape(backbone, x.shape[-1]) == tuple(real[1:])
    assert real[1] == backbone.num_features


def test_one_channel_input_sums_the_rgb_kernels():
    state = load_lite0_state()
    model = build_model("efficientnet_lite0", HEAD, 3, pretrained="imagenet", image_size=64, in_chans=1)
    first = model.backbone.stem[0]
    assert first.in_channels == 1
    assert torch.allclose(first.weight, state["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert model(batch("efficientnet_lite0", channels=1)).shape == (2, 3)


def test_freeze_up_to_a_named_layer():
    model = build_model("mobilenet_v2", HEAD, 3, freeze="features.14", image_size=64)
    frozen = {n.split(".")[1] for n, p in model.backbone.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert frozen == {str(i) for i in range(14)}
    assert trainable == {str(i) for i in range(14, 19)}
    model.train()
    assert not model.backbone.features[0][1].training, "a frozen BatchNorm must stay in eval mode"
    assert model.backbone.features[14].conv[0][1].training


def test_freeze_with_an_unknown_layer_lists_layer_names():
    with pytest.raises(ConfigError, match="no such backbone layer.*layer4"):
        build_model("resnet50", HEAD, 3, freeze="layer9")


def test_sigmoid_head_with_two_classes_has_one_logit():
    model = build_model(
        "convnet", HeadConfig(pooling="flatten", hidden=[16], output="sigmoid"), 2, image_size=32
    )
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 1)


def test_forward_head_pre_logits_gives_the_last_hidden_layer():
    model = build_model("convnet", HeadConfig(pooling="gap", hidden=[16, 8]), 3, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        hidden = model.forward_head(model.forward_features(x), pre_logits=True)
        assert hidden.shape == (2, 8)
        assert torch.allclose(model.head.fc(hidden), model(x))


def test_file_weights_round_trip_whole_model_and_backbone(tmp_path):
    source = build_model("mobilenet_v2", HEAD, 3, image_size=64).eval()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.save(source.backbone.state_dict(), tmp_path / "backbone.pt")
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "run.ckpt"
    )
    x = batch("mobilenet_v2")
    with torch.no_grad():
        expected = source(x)
        for name in ("model.pt", "run.ckpt"):
            copy = build_model(
                "mobilenet_v2", HEAD, 3, pretrained=f"file:{tmp_path / name}", image_size=64
            ).eval()
            assert torch.allclose(copy(x), expected)
        only_backbone = build_backbone("mobilenet_v2", pretrained=f"file:{tmp_path / 'backbone.pt'}").eval()
        assert torch.allclose(only_backbone(x), source.backbone(x))


def test_file_weights_that_do_not_fit_or_do_not_exist(tmp_path):
    torch.save(build_backbone("convnet").state_dict(), tmp_path / "convnet.pt")
    with pytest.raises(ConfigError, match="weights do not fit.*missing"):
        build_model("mobilenet_v2", HEAD, 3, pretrained=f"file:{tmp_path / 'convnet.pt'}", image_size=64)
    with pytest.raises(ConfigError, match="not found"):
        build_model("convnet", HEAD, 3, pretrained=f"file:{tmp_path / 'absent.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable"):
        build_model("convnet", HEAD, 3, pretrained=f"file:{tmp_path / 'junk.pt'}")


def test_bad_pretrained_values():
    with pytest.raises(ConfigError, match="imagenet, file:PATH or none"):
        build_model("convnet", HEAD, 3, pretrained="timm")
    with pytest.raises(ConfigError, match="convnet has no ImageNet weights"):
        build_model("convnet", HEAD, 3, pretrained="imagenet")


def test_image_below_the_architecture_minimum():
    with pytest.raises(ConfigError, match="minimum of 75"):
        build_model("inception_v3", HEAD, 3, image_size=64)


def test_failed_imagenet_download_names_the_offline_choices(monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="cannot download.*resnet50.*efficientnet_lite0.*file:PATH.*none"):
        build_model("resnet50", HEAD, 3, pretrained="imagenet")


TORCHVISION_NETS = {
    "vgg16": {},
    "resnet50": {},
    "densenet121": {},
    "mobilenet_v2": {},
    "inception_v3": {"aux_logits": True, "init_weights": False},
    "efficientnet_b0": {},
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_NETS))
def test_imagenet_weights_fill_every_backbone_tensor(arch, monkeypatch):
    """The torchvision checkpoint (replaced by zeros, as there is no network) loads into the adapter."""
    with torch.device("meta"):
        shapes = getattr(torchvision.models, arch)(**TORCHVISION_NETS[arch]).state_dict()
    zeros = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", lambda *_a, **_k: zeros)
    backbone = build_backbone(arch, pretrained="imagenet")
    assert all(torch.count_nonzero(t) == 0 for t in backbone.state_dict().values())


def test_efficientnet_lite0_offline_weights_match_upstream():
    path = lite0_weights_path()
    state = load_lite0_state(path)
    upstream = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    upstream.load_state_dict(state)
    ours = build_backbone("efficientnet_lite0", pretrained="imagenet").eval()
    x = batch("efficientnet_lite0")
    with torch.no_grad():
        assert torch.allclose(ours(x), upstream.eval().extract_features(x), atol=1e-5)
    assert torch.equal(ours.head[0].weight, state["_conv_head.weight"])


def test_efficientnet_lite0_rejects_a_file_with_the_wrong_checksum(tmp_path):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    data = bytearray(lite0_weights_path().read_bytes())
    data[-1] ^= 0xFF
    fake.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"does not start with {LITE0_SHA256_PREFIX}"):
        load_lite0_state(fake)


def test_classifier_contract():
    model = build_model("convnet", HeadConfig(pooling="flatten", hidden=[256]), 3, image_size=50)
    assert isinstance(model, Classifier) and model.arch == "convnet" and model.image_size == 50
    assert model.backbone.num_features == 32
    assert not any(isinstance(m, (nn.Softmax, nn.Sigmoid)) for m in model.modules())
