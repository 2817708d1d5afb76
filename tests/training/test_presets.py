"""Presets load, validate against RunConfig, build their models with the seeds' head sizes; overrides."""

from __future__ import annotations

import typing
from importlib import resources

import pytest
import yaml
from pydantic import BaseModel

from covid_cxr.config import ReduceLROnPlateauConfig, RunConfig
from covid_cxr.errors import ConfigError
from covid_cxr.models import build_from_config
from covid_cxr.training.presets import dump_config, list_presets, load_config, load_preset

PRESET_DIR = resources.files("covid_cxr.training") / "presets"


def dense(inputs: int, units: int) -> int:
    """Parameters of a Keras Dense layer: kernel plus bias."""
    return inputs * units + units


# preset -> (classes, trainable head parameters from the seed's layer sizes). Feature maps at the
# preset sizes: VGG16 7x7x512 (224 px) or 4x4x512 (150 px); ResNet50 7x7x2048; DenseNet121 7x7x1024;
# InceptionV3 6x6x2048 (256 px); MobileNetV2 / EfficientNet-Lite0 1280 channels; the ConvNet 24x24x32.
HEADS = {
    "pinto-vgg16": (3, dense(512, 64) + dense(64, 3)),
    "pinto-resnet50": (3, dense(2048, 256) + dense(256, 512) + dense(512, 512) + dense(512, 3)),
    "pinto-densenet121": (3, dense(1024, 528) + dense(528, 3)),
    "xu-vgg16-binary": (2, dense(4 * 4 * 512, 256) + dense(256, 1)),
    "xu-vgg16-3class": (3, dense(4 * 4 * 512, 256) + dense(256, 3)),
    "xu-vgg16-4class": (4, dense(4 * 4 * 512, 256) + dense(256, 4)),
    "covidlite-mobilenetv2": (
        3,
        dense(1280, 512) + dense(512, 128) + dense(128, 64) + dense(64, 32) + dense(32, 3),
    ),
    "li-inceptionv3": (3, dense(2048, 64) + dense(64, 3)),
    "machinecurve-convnet": (3, dense(24 * 24 * 32, 256) + dense(256, 3)),
    "machinecurve-inceptionv3": (3, dense(2048, 200) + dense(200, 100) + dense(100, 50) + dense(50, 3)),
    "demo": (3, dense(1280, 32) + dense(32, 3)),
}


def missing_fields(data: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``model`` that ``data`` leaves out, nested sections included."""
    missing = []
    for name, info in model.model_fields.items():
        if name not in data:
            missing.append(prefix + name)
            continue
        sub = next(
            (
                t
                for t in (info.annotation, *typing.get_args(info.annotation))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            None,
        )
        if sub is not None and isinstance(data[name], dict):
            missing += missing_fields(data[name], sub, f"{prefix}{name}.")
    return missing


def test_every_issue_preset_ships():
    assert {p.name for p in list_presets()} == set(HEADS)
    assert {f.name for f in PRESET_DIR.iterdir() if f.name.endswith(".yaml")} == {f"{n}.yaml" for n in HEADS}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_preset_is_complete_and_valid(name):
    raw = load_preset(name)
    assert raw["name"] == name
    assert raw["description"] and "\n" not in raw["description"]
    assert raw["seed_ref"]
    assert missing_fields(raw, RunConfig) == []
    assert load_config(name).name == name


@pytest.mark.parametrize("name", sorted(HEADS))
def test_preset_builds_with_the_seed_head_size(name):
    classes, head_params = HEADS[name]
    cfg = load_config(name, None, ["model.pretrained=none"])
    model = build_from_config(cfg, classes)
    assert sum(p.numel() for p in model.head.parameters()) == head_params
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if cfg.model.freeze == "all":
        assert trainable == head_params
    else:
        assert trainable > head_params


def test_seed_summaries_quoted_in_the_issue():
    vgg = build_from_config(load_config("pinto-vgg16", None, ["model.pretrained=none"]), 3)
    assert [sum(p.numel() for p in m.parameters()) for m in (vgg.head.hidden[0], vgg.head.fc)] == [
        32_832,
        195,
    ]
    inception = build_from_config(load_config("li-inceptionv3", None, ["model.pretrained=none"]), 3)
    assert [
        sum(p.numel() for p in m.parameters()) for m in (inception.head.hidden[0], inception.head.fc)
    ] == [131_136, 195]


def test_seed_004_convnet_total_matches_keras():
    model = build_from_config(load_config("machinecurve-convnet"), 3)
    conv = 3 * 3 * 3 * 32 + 32
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == conv + dense(18_432, 256) + dense(
        256, 3
    )


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(
        "pinto-vgg16",
        None,
        [
            "train.epochs=3",
            "preprocess.size=64",
            "model.head.hidden=[32]",
            "optim.lr=1e-4",
            "train.early_stopping=null",
            "data.reader_options.pneumonia_types=true",
        ],
    )
    assert (cfg.train.epochs, cfg.preprocess.size, cfg.model.head.hidden) == (3, 64, [32])
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.train.early_stopping is None
    assert cfg.data.reader_options == {"pneumonia_types": True}
    assert cfg.model.arch == "vgg16"


def test_override_fills_a_section_the_preset_left_null():
    cfg = load_config("demo", None, ["train.reduce_lr.patience=4"])
    assert cfg.train.reduce_lr.patience == 4
    assert cfg.train.reduce_lr.factor == ReduceLROnPlateauConfig().factor


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", r"unknown key 'train.epoch'; valid keys in train: epochs, batch_size"),
        ("trian.epochs=3", r"unknown key 'trian'; valid keys at the top level: name, .*train"),
        (
            "model.head.units=[3]",
            r"unknown key 'model.head.units'; valid keys in model.head: pooling, hidden",
        ),
        ("train.epochs.max=3", r"'train.epochs' is a value, not a section"),
        ("train.epochs", r"expected key.sub=value"),
        ("optim.lr=fast", r"optim.lr: Input should be a valid number"),
        ("model.head.hidden=[1, 2", r"not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", None, [override])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="unknown preset 'vgg'.*pinto-vgg16"):
        load_config("vgg")


def test_config_file_merges_over_the_preset_and_overrides_win(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\nmodel:\n  head:\n    hidden: [16]\n")
    cfg = load_config("pinto-densenet121", path, ["train.batch_size=2"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.head.hidden) == (7, 2, [16])
    assert cfg.model.head.dropout == [0.2] and cfg.model.arch == "densenet121"


def test_config_file_errors(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("train:\n  epoch: 7\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.epoch'"):
        load_config(None, bad_key)
    with pytest.raises(ConfigError, match="not found"):
        load_config(None, tmp_path / "absent.yaml")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(None, not_mapping)


def test_dump_config_round_trips(tmp_path):
    cfg = load_config("covidlite-mobilenetv2", None, ["preprocess.mean=[0.5, 0.5, 0.5]"])
    text = dump_config(cfg)
    assert yaml.safe_load(text)["preprocess"]["white_balance"] == 0.05
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(None, path) == cfg


def test_no_preset_gives_the_defaults():
    assert load_config() == RunConfig()
