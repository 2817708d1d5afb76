"""BundleInfo: bundle.json as one typed record, and the one place that reads and writes it.

Like timm's ``PretrainedCfg``, the metadata travels with the weights: class names, architecture,
head, preprocessing, Grad-CAM layer, temperature (with how it was fitted), training data and the
files' SHA-256. Evaluate, export, report, serve and predict read bundle.json through
:func:`read_bundle_info`; only :func:`write_bundle_info` writes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from covid_cxr.config import HeadConfig
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError
from covid_cxr.io import atomic_write_text

FORMAT_VERSION = "1"
BUNDLE_JSON = "bundle.json"
MODEL_PT = "model.pt"
MODEL_ONNX = "model.onnx"
ONNX_PROBABILITIES, ONNX_FEATURES = "probabilities", "features"  # model.onnx's outputs, in this order
OOD_NPZ = "ood.npz"
INTENDED_USE = "research only, not for diagnosis"


class RunRef(BaseModel):
    """Which run made the bundle."""

    model_config = ConfigDict(extra="allow")
    name: str = "run"
    seed_ref: str = ""


class Calibration(BaseModel):
    """How the temperature was chosen: fitted on the validation split, kept only if it lowered the NLL."""

    model_config = ConfigDict(extra="allow")
    method: str = "temperature"
    fitted_on: str = "val"
    n_val: int = 0
    fitted_temperature: float | None = None
    kept: bool = False
    reason: str = ""
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    val_ece_before: float | None = None
    val_ece_after: float | None = None


OOD_FORMAT = 2  # 2: Mahalanobis on L2-normalised features; 1 (or no `format`): on raw features


class OodInfo(BaseModel):
    """The OOD detector: its arrays in ``file`` (listed in ``files``), its threshold here."""

    model_config = ConfigDict(extra="allow")
    format: int = Field(1, description="how ood.npz is to be read; only OOD_FORMAT is scored")
    method: str = "mahalanobis"
    features: str = "pooled"
    file: str = OOD_NPZ
    quantile: float = 0.99
    threshold: float
    n_train: int = 0
    n_val: int = 0


class ConformalInfo(BaseModel):
    """Split-conformal prediction sets: q-hat fitted on the validation split at the bundle's temperature."""

    model_config = ConfigDict(extra="allow")
    method: str = "lac"
    coverage: float = 0.9
    qhat: float
    temperature: float = 1.0
    n_val: int = 0
    val_mean_set_size: float | None = None


class BundleInfo(BaseModel):
    """The content of bundle.json (format version 1); unknown keys of newer writers are kept."""

    model_config = ConfigDict(extra="allow")
    format_version: str = FORMAT_VERSION
    intended_use: str = INTENDED_USE
    created: str = ""
    covid_cxr_version: str = ""
    run: RunRef = Field(default_factory=RunRef)
    class_names: list[str] = Field(min_length=1)
    arch: str
    head: HeadConfig
    preprocess: Preprocess
    target_layer: str | None = None
    temperature: float = Field(1.0, gt=0)
    calibration: Calibration | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str = ""
    training_data: list[dict[str, Any]] = Field(
        default_factory=list, description="each data source: path, reader, options, images per class"
    )
    onnx: dict[str, Any] | None = None
    ood: OodInfo | None = Field(None, description="None: a bundle written before OOD detection")
    conformal: ConformalInfo | None = Field(None, description="None: no conformal sets fitted")
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _lists_weights(cls, value: dict[str, str]) -> dict[str, str]:
        if MODEL_PT not in value:
            raise ValueError(f"'files' must map {MODEL_PT} (and {MODEL_ONNX}) to their sha256")
        return value

    @property
    def name(self) -> str:
        """The run name made safe for URLs and folder names, or 'covid_cxr'."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.run.name).strip("_.") or "covid_cxr"

    @property
    def has_onnx(self) -> bool:
        """True when the bundle lists a model.onnx."""
        return MODEL_ONNX in self.files


def read_bundle_info(folder: str | Path) -> BundleInfo:
    """Parse and validate ``folder/bundle.json``; BundleError naming the file and the problem."""
    path = Path(folder) / BUNDLE_JSON
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: unknown format_version {raw.get('format_version')!r} (this covid-cxr reads "
            f"{FORMAT_VERSION!r}); write the bundle again with this version"
        )
    try:
        return BundleInfo.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: {'; '.join(_problem(e) for e in exc.errors())}") from None


def _problem(error: Any) -> str:
    """One pydantic error as 'missing key X' or 'X: what is wrong'."""
    where = ".".join(map(str, error["loc"])) or "-"
    if error["type"] == "missing":
        return f"missing key {where}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def write_bundle_info(folder: str | Path, info: BundleInfo) -> Path:
    """Write ``folder/bundle.json`` atomically (the only writer of that file); return its path."""
    path = Path(folder) / BUNDLE_JSON
    payload = info.model_dump(mode="python")
    atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    """json.dumps fallback for numpy scalars and arrays and paths in the metrics summary."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"bundle.json: {type(value).__name__} is not JSON serialisable")
