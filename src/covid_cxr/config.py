"""Run configuration: pydantic models filled from a preset YAML, a config file and --set overrides."""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from covid_cxr.data.spec import Preprocess


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """One data source of a run: its path, reader, reader options and class mapping."""

    path: str
    name: str | None = Field(None, description="the source's name in the manifest (default: its folder name)")
    reader: str = "auto"
    options: dict = Field(default_factory=dict, description="reader options, e.g. pneumonia_types: true")
    map: dict[str, str] = Field(
        default_factory=dict, description="data label -> class name; '-' drops the label's images"
    )


class DataConfig(_Strict):
    """Where the images come from and how they are split and balanced."""

    source: str | None = None
    reader: str = "auto"
    reader_options: dict = Field(default_factory=dict)
    map: dict[str, str] = Field(
        default_factory=dict, description="class mapping of data.source: label -> class name, '-' drops it"
    )
    sources: list[SourceConfig] = Field(
        default_factory=list, description="several sources in one run (replaces source/reader/map)"
    )
    holdout_source: str | None = Field(None, description="this whole source (by name) is the test split")
    classes: list[str] | None = Field(None, description="keep only these labels, in this order")
    test_fraction: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.15, ge=0, lt=1, description="fraction of what remains after the test split")
    test_per_class: int | None = Field(
        None, ge=1, description="hold out exactly this many test images per class"
    )
    use_given_split: bool = Field(True, description="keep a split the source provides (Kermany train/test)")
    group_by_patient: bool = True
    balance: Literal["none", "undersample", "class_weights", "sampler", "source_class"] = Field(
        "none", description="source_class: the sampler weights every (source, class) cell equally"
    )
    seed: int = 42


class AugmentConfig(_Strict):
    """Keras ImageDataGenerator-style augmentation; zeros mean off."""

    rotation: float = 0.0
    width_shift: float = 0.0
    height_shift: float = 0.0
    shear: float = 0.0
    zoom: float = 0.0
    channel_shift: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: Literal["nearest", "constant", "reflect"] = Field(
        "nearest", description="areas a transform uncovers: edge pixels, black (cval 0) or a mirror"
    )
    featurewise_center: bool = False
    featurewise_std_normalization: bool = False

    @property
    def active(self) -> bool:
        """True when any random transform is on."""
        return any(
            [
                self.rotation,
                self.width_shift,
                self.height_shift,
                self.shear,
                self.zoom,
                self.channel_shift,
                self.horizontal_flip,
                self.vertical_flip,
            ]
        )


class HeadConfig(_Strict):
    """Classification head: pooling, hidden layers, dropout after each, final activation."""

    pooling: Literal["gap", "avg4", "flatten", "avg4_flatten", "none"] = "gap"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    dropout: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=list, description="dropout after each hidden layer (0 = none)"
    )
    final_dropout: float = Field(0.0, ge=0, lt=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    output: Literal["softmax", "sigmoid"] = "softmax"


class ModelConfig(_Strict):
    """Backbone, weights, freezing and head."""

    arch: str = "mobilenet_v2"
    pretrained: str = Field("none", description="imagenet | file:PATH | none")
    freeze: str = Field("none", description="all | none | up to a named layer (e.g. features.14)")
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        """The name of a registered backbone; the error suggests the closest one."""
        from covid_cxr.models import list_backbones  # lazy: the registry imports torch

        valid = list_backbones()
        if arch not in valid:
            close = difflib.get_close_matches(arch, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown architecture {arch!r}; {hint}valid: {', '.join(valid)}")
        return arch


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["min", "max"] = "min"


class CheckpointConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"


class ReduceLROnPlateauConfig(_Strict):
    monitor: str = "val_loss"
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    min_delta: float = Field(1e-4, ge=0)
    min_lr: float = Field(0.0, ge=0)
    mode: Literal["min", "max"] = "min"


class OptimConfig(_Strict):
    name: Literal["adam", "sgd", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class TrainConfig(_Strict):
    """Loop settings handed to Lightning."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int = 42
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_workers: int = Field(0, ge=0)
    compile: bool = Field(
        False, description="torch.compile the trained model: faster steps after a one-off compilation"
    )
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    reduce_lr: ReduceLROnPlateauConfig | None = None
    cache_features: bool = Field(
        True, description="frozen backbone and no augmentation: train the head on cached features"
    )
    calibrate: bool = Field(
        True, description="fit a temperature on the validation split after training, kept if it lowers NLL"
    )


class ReliabilityConfig(_Strict):
    """The OOD detector and conformal sets fitted after training (``covid-cxr reliability`` refits them)."""

    fit: bool = Field(True, description="fit both after training and calibration")
    ood_method: Literal["mahalanobis", "knn"] = "mahalanobis"
    ood_quantile: float = Field(0.99, gt=0, lt=1, description="flag above this quantile of val scores")
    conformal_method: Literal["lac", "aps"] = "lac"
    coverage: float = Field(0.9, gt=0, lt=1, description="target coverage of the prediction sets")


class RunConfig(_Strict):
    """Everything a run needs; written fully resolved to runs/<name>/config.yaml."""

    name: str = "run"
    description: str = ""
    seed_ref: str = Field("", description="which seed notebook this reproduces")
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: Preprocess = Field(default_factory=Preprocess)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
