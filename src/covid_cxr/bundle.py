"""The bundle: the one deployable artifact (bundle.json + model.pt + model.onnx), written atomically.

``model.onnx`` takes normalised NCHW float32 input named ``input`` (dynamic batch) and returns
``probabilities`` (N, C): softmax(logits / T), or for a one-logit sigmoid head ``[1 - p, p]``.
The temperature is baked into the ONNX graph, so any ONNX runtime serves calibrated probabilities.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covid_cxr import __version__
from covid_cxr.bundle_info import (
    BUNDLE_JSON,
    FORMAT_VERSION,
    INTENDED_USE,
    MODEL_ONNX,
    MODEL_PT,
    ONNX_FEATURES,
    ONNX_PROBABILITIES,
    OOD_NPZ,
    BundleInfo,
    Calibration,
    ConformalInfo,
    OodInfo,
    RunRef,
    read_bundle_info,
    write_bundle_info,
)
from covid_cxr.config import HeadConfig, RunConfig
from covid_cxr.data.manifest import sha256_file
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError, ConfigError
from covid_cxr.io import atomic_replace_dir
from covid_cxr.models.zoo import build_model
from covid_cxr.predictor import Backend, Predictor, Probabilities
from covid_cxr.reliability.assess import Reliability

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_JSON",
    "FORMAT_VERSION",
    "INTENDED_USE",
    "MODEL_ONNX",
    "MODEL_PT",
    "BundleInfo",
    "load_bundle",
    "retemper_bundle",
    "store_reliability",
    "save_onnx",
    "write_bundle",
]

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4
_ONNX_IO = {"input": "input", "output": ONNX_PROBABILITIES, "features": ONNX_FEATURES, "opset": ONNX_OPSET}


def write_bundle(
    out_dir: str | Path,
    model: nn.Module,
    config: RunConfig,
    classes: list[str],
    preprocess: Preprocess,
    metrics: dict,
    data_fingerprint: str,
    temperature: float = 1.0,
    export_onnx: bool = True,
    calibration: Calibration | None = None,
    training_data: list[dict] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle folder `out_dir` (replacing an older one atomically) and return its path."""
    info = BundleInfo(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        covid_cxr_version=__version__,
        run=RunRef(name=config.name, seed_ref=config.seed_ref),
        class_names=list(classes),
        arch=config.model.arch,
        head=config.model.head,
        preprocess=preprocess,
        temperature=float(temperature),
        calibration=calibration,
        metrics=metrics,
        data_fingerprint=data_fingerprint,
        training_data=training_data or [],
        files={MODEL_PT: ""},
        **(extra or {}),
    )
    return _write_folder(Path(out_dir), model, info, export_onnx)


def retemper_bundle(folder: str | Path, temperature: float, calibration: Calibration | None) -> BundleInfo:
    """Rewrite a bundle with another temperature (bundle.json and the ONNX graph, which bakes T in)."""
    predictor = load_bundle(folder, backend="torch")
    update: dict[str, Any] = {"temperature": float(temperature), "calibration": calibration}
    conformal = predictor.bundle_info.conformal
    if conformal is not None and abs(conformal.temperature - float(temperature)) > 1e-9:
        log.warning(
            "%s: the conformal sets were fitted at T = %.3g; dropped (covid-cxr reliability refits them)",
            folder,
            conformal.temperature,
        )
        update["conformal"] = None
    info = predictor.bundle_info.model_copy(update=update)
    model = predictor.model.to(memory_format=torch.contiguous_format)
    _write_folder(Path(folder), model, info, info.has_onnx)
    return read_bundle_info(folder)


def store_reliability(
    folder: str | Path, ood: OodInfo, arrays: dict[str, np.ndarray], conformal: ConformalInfo | None
) -> BundleInfo:
    """Rewrite a bundle with the OOD detector (its arrays in ood.npz, hashed in ``files``) and the
    conformal record; the folder is copied, changed and renamed over the old one."""
    final = Path(folder)
    info = read_bundle_info(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        with open(tmp / OOD_NPZ, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        files = {**info.files, OOD_NPZ: sha256_file(tmp / OOD_NPZ)}
        write_bundle_info(tmp, info.model_copy(update={"ood": ood, "conformal": conformal, "files": files}))
        atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_bundle_info(final)


def load_ood_arrays(folder: str | Path, info: BundleInfo) -> dict[str, np.ndarray] | None:
    """The OOD detector's arrays (float64) from the bundle's ood.npz, or None for an older bundle."""
    if info.ood is None:
        return None
    path = Path(folder) / info.ood.file
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k].astype(np.float64) for k in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable OOD file ({exc})") from None


def _write_folder(final: Path, model: nn.Module, info: BundleInfo, export_onnx: bool) -> Path:
    """model.pt (+ model.onnx) and bundle.json into a temporary folder, then renamed over `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        n = len(info.class_names)
        cpu_model = _build(final, info.arch, info.head, n, info.preprocess)
        _load_state(cpu_model, model.state_dict(), f"{final}: the model given for {info.arch!r}")
        probs = Probabilities(cpu_model, n, info.temperature, info.head.output).eval()
        torch.save(cpu_model.state_dict(), tmp / MODEL_PT)
        files = {MODEL_PT: sha256_file(tmp / MODEL_PT)}
        for name in set(info.files) - {MODEL_PT, MODEL_ONNX}:  # ood.npz: kept as it was
            shutil.copy2(final / name, tmp / name)
            files[name] = sha256_file(tmp / name)
        if export_onnx:
            save_onnx(probs, info.preprocess, tmp / MODEL_ONNX)
            files[MODEL_ONNX] = sha256_file(tmp / MODEL_ONNX)
        info = info.model_copy(
            update={
                "files": files,
                "onnx": dict(_ONNX_IO) if export_onnx else None,
                "target_layer": _cam_layer(cpu_model, info.preprocess.size),
            }
        )
        write_bundle_info(tmp, info)
        atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s)", final, ", ".join(files))
    return final


def load_bundle(path: str | Path, backend: Backend = "auto", threads: int = 0) -> Predictor:
    """Check and load a bundle folder into a Predictor; raises BundleError naming the file and problem.

    ``backend``: ``auto`` (ONNX Runtime when model.onnx and onnxruntime are there, else torch),
    ``onnx`` or ``torch``. ``threads``: ONNX Runtime intra-op threads (0 = one per physical core).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: bundle folder not found")
    info = read_bundle_info(folder)
    for name, digest in info.files.items():
        _check_file(folder / name, digest)
    model = _rebuild_model(folder, info)
    onnx_path = folder / MODEL_ONNX if info.has_onnx else None
    reliability = Reliability.from_bundle(folder, info)
    return Predictor(
        model, info, onnx_path=onnx_path, backend=backend, threads=threads, reliability=reliability
    )


def _cam_layer(model: nn.Module, size: int) -> str:
    """The Grad-CAM layer at the bundle's input size (the declared one unless its map is too coarse)."""
    from covid_cxr.explain.cam import default_layer  # pytorch-grad-cam is imported only when writing

    return default_layer(model, model.target_layer_name, size)


def save_onnx(probs: Probabilities, spec: Preprocess, path: Path) -> None:
    """Export probabilities and pooled features with a dynamic batch dimension; check ONNX Runtime
    agrees with PyTorch."""
    example = torch.randn(2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter needs no onnxscript
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic traced as constants
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)  # a pad's Slice; ORT folds it
        torch.onnx.export(
            probs.with_features(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=[ONNX_PROBABILITIES, ONNX_FEATURES],
            dynamic_axes={name: {0: "batch"} for name in ("input", ONNX_PROBABILITIES, ONNX_FEATURES)},
        )
    _verify_onnx(probs, path, torch.cat([example, -example, example * 0.5]))


def _verify_onnx(probs: nn.Module, path: Path, batch: torch.Tensor) -> None:
    """Raise BundleError when ONNX Runtime's probabilities differ from PyTorch's by more than 1e-4."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch.numpy()})[0]
    with torch.inference_mode():
        want = probs(batch).numpy()
    diff = float(np.abs(got - want).max())
    if got.shape != want.shape or not diff <= ONNX_TOLERANCE:
        raise BundleError(f"{path}: ONNX export disagrees with PyTorch (max abs diff {diff:.2e})")


def _check_file(path: Path, digest: str) -> None:
    """Raise BundleError when a listed file is absent or its SHA-256 differs from bundle.json."""
    if not path.is_file():
        raise BundleError(f"{path}: missing (listed in {BUNDLE_JSON})")
    actual = sha256_file(path)
    if actual != digest:
        raise BundleError(f"{path}: sha256 mismatch (file {actual[:12]}..., {BUNDLE_JSON} {digest[:12]}...)")


def _rebuild_model(folder: Path, info: BundleInfo) -> nn.Module:
    """Build the architecture from bundle.json and load model.pt into it."""
    model = _build(folder / BUNDLE_JSON, info.arch, info.head, len(info.class_names), info.preprocess)
    try:
        state = torch.load(folder / MODEL_PT, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, pickle.UnpicklingError) as exc:
        raise BundleError(f"{folder / MODEL_PT}: not a readable state dict ({exc})") from None
    _load_state(model, state, str(folder / MODEL_PT))
    return model.eval()


def _build(where: Path, arch: str, head: HeadConfig, num_classes: int, spec: Preprocess) -> nn.Module:
    """build_model without weights for the spec's size and channels; failures name `where`."""
    try:
        return build_model(
            arch, head, num_classes, pretrained="none", image_size=spec.size, in_chans=spec.channels
        )
    except (ValueError, ConfigError) as exc:
        raise BundleError(f"{where}: cannot build {arch!r} with {num_classes} classes ({exc})") from None


def _load_state(model: nn.Module, state: Any, what: str) -> None:
    """load_state_dict, turning a shape or key mismatch into a BundleError naming `what`."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise BundleError(f"{what}: weights do not fit the architecture ({exc})") from None
