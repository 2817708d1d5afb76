"""Export: check a bundle's model.onnx against PyTorch and write a Triton/KServe model repository.

The model repository layout is the one Triton Inference Server and KServe's Triton runtime read::

    <triton_dir>/<name>/config.pbtxt      platform onnxruntime_onnx, dynamic batch, dynamic batching
    <triton_dir>/<name>/labels.txt        class names, one per line (Triton's classification extension)
    <triton_dir>/<name>/1/model.onnx      input "input" (N, C, H, W) normalised FP32 -> "probabilities" (N, K)

Clients preprocess with the bundle's spec (written into config.pbtxt as the ``preprocess`` parameter).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx as onnxlib
import torch

from covid_cxr.bundle import ONNX_TOLERANCE, load_bundle, save_onnx
from covid_cxr.bundle_info import (
    BUNDLE_JSON,
    INTENDED_USE,
    MODEL_ONNX,
    ONNX_FEATURES,
    ONNX_PROBABILITIES,
    BundleInfo,
    write_bundle_info,
)
from covid_cxr.data.manifest import sha256_file
from covid_cxr.errors import BundleError
from covid_cxr.io import atomic_replace_dir
from covid_cxr.predictor import Predictor, Probabilities

log = logging.getLogger(__name__)

CHECK_BATCHES = (1, 5)  # batch sizes compared between ONNX Runtime and PyTorch
TRITON_MAX_BATCH = 16
TRITON_QUEUE_DELAY_US = 5000
LABELS = "labels.txt"


def export_run(
    run_or_bundle_dir: str | Path,
    onnx: bool = True,
    triton_dir: str | Path | None = None,
    name: str | None = None,
    max_batch_size: int = TRITON_MAX_BATCH,
) -> dict[str, Any]:
    """Ensure bundle/model.onnx matches PyTorch (max abs diff <= 1e-4); optionally write a Triton repository.

    ``run_or_bundle_dir`` is a run folder (holding ``bundle/``) or a bundle folder. A missing model.onnx
    is exported and recorded in bundle.json. ``name`` defaults to the run name. Returns what was done:
    ``bundle``, ``onnx``, ``exported``, ``max_abs_diff``, ``triton_model`` and ``config``.
    """
    bundle = resolve_bundle(run_or_bundle_dir)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "onnx": None,
        "exported": False,
        "max_abs_diff": None,
        "triton_model": None,
        "config": None,
    }
    if onnx or triton_dir is not None:
        predictor = load_bundle(bundle, backend="torch")
        result["exported"] = ensure_onnx(bundle, predictor)
        result["onnx"] = str(bundle / MODEL_ONNX)
        result["max_abs_diff"] = onnx_max_abs_diff(bundle / MODEL_ONNX, predictor)
        log.info(
            "%s: ONNX Runtime agrees with PyTorch (max abs diff %.2e)",
            bundle / MODEL_ONNX,
            result["max_abs_diff"],
        )
        if triton_dir is not None:
            model_dir = write_triton_repository(bundle, predictor, Path(triton_dir), name, max_batch_size)
            result["triton_model"], result["config"] = str(model_dir), str(model_dir / "config.pbtxt")
    return result


def resolve_bundle(path: str | Path) -> Path:
    """The bundle folder: `path` itself or `path/bundle`; BundleError when neither holds bundle.json."""
    folder = Path(path)
    for candidate in (folder, folder / "bundle"):
        if (candidate / BUNDLE_JSON).is_file():
            return candidate
    raise BundleError(
        f"{folder}: no {BUNDLE_JSON} here or in {folder / 'bundle'} (give a run or bundle folder)"
    )


def ensure_onnx(bundle: Path, predictor: Predictor) -> bool:
    """Export model.onnx into the bundle and record it in bundle.json when it is missing; True if exported."""
    info = predictor.bundle_info
    if info.has_onnx and (bundle / MODEL_ONNX).is_file():
        return False
    tmp = bundle / f".{MODEL_ONNX}.tmp"
    try:
        save_onnx(_probabilities(predictor), predictor.preprocess, tmp)
        tmp.replace(bundle / MODEL_ONNX)
    finally:
        tmp.unlink(missing_ok=True)
    files = {**info.files, MODEL_ONNX: sha256_file(bundle / MODEL_ONNX)}
    opset = _opset(bundle / MODEL_ONNX)
    onnx = {"input": "input", "output": ONNX_PROBABILITIES, "features": ONNX_FEATURES, "opset": opset}
    write_bundle_info(bundle, info.model_copy(update={"files": files, "onnx": onnx}))
    log.info("%s: exported and added to %s", bundle / MODEL_ONNX, BUNDLE_JSON)
    return True


def onnx_max_abs_diff(path: Path, predictor: Predictor, seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| probability on random inputs; BundleError above 1e-4."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec, probs = predictor.preprocess, _probabilities(predictor)
    generator = torch.Generator().manual_seed(seed)
    diff = 0.0
    for n in CHECK_BATCHES:
        x = torch.randn(n, spec.channels, spec.size, spec.size, generator=generator)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.inference_mode():
            want = probs(x).numpy()
        if got.shape != want.shape:
            raise BundleError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
        diff = max(diff, float(np.abs(got - want).max()))
    if not diff <= ONNX_TOLERANCE:
        raise BundleError(
            f"{path}: ONNX Runtime disagrees with PyTorch (max abs diff {diff:.2e} > {ONNX_TOLERANCE})"
        )
    return diff


def write_triton_repository(
    bundle: Path,
    predictor: Predictor,
    triton_dir: Path,
    name: str | None = None,
    max_batch_size: int = TRITON_MAX_BATCH,
) -> Path:
    """Write (atomically replace) ``triton_dir/<name>`` with config.pbtxt, labels.txt and 1/model.onnx."""
    name = name or predictor.bundle_info.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BundleError(f"Triton model name {name!r}: use letters, digits, '_', '.', '-' only")
    if max_batch_size < 1:
        raise BundleError(f"max_batch_size must be >= 1, got {max_batch_size}")
    triton_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=triton_dir, prefix=f".{name}.tmp-"))
    try:
        (tmp / "1").mkdir()
        shutil.copyfile(bundle / MODEL_ONNX, tmp / "1" / MODEL_ONNX)
        (tmp / LABELS).write_text("".join(f"{c}\n" for c in predictor.classes), encoding="utf-8")
        config = triton_config(name, bundle / MODEL_ONNX, predictor, max_batch_size)
        (tmp / "config.pbtxt").write_text(config, encoding="utf-8")
        atomic_replace_dir(tmp, triton_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote Triton model %s", triton_dir / name)
    return triton_dir / name


def triton_config(name: str, onnx_path: Path, predictor: Predictor, max_batch_size: int) -> str:
    """config.pbtxt text for the ONNX model: names and shapes read from the graph, batch dimension dynamic."""
    graph = onnxlib.load(str(onnx_path), load_external_data=False).graph
    (inp,), (out, *more) = graph.input, graph.output  # probabilities, then the pooled features
    in_dims, out_dims = _dims(inp, onnx_path), _dims(out, onnx_path)
    params = {
        "class_names": json.dumps(predictor.classes),
        "preprocess": json.dumps(predictor.preprocess.model_dump(mode="json")),
        "intended_use": INTENDED_USE,
    }
    lines = [
        f"name: {_quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f"input [ {{ name: {_quote(inp.name)} data_type: TYPE_FP32 dims: {in_dims} }} ]",
        "output [ "
        + ", ".join(
            [
                f"{{ name: {_quote(out.name)} data_type: TYPE_FP32 dims: {out_dims} "
                f"label_filename: {_quote(LABELS)} }}",
                *(
                    f"{{ name: {_quote(o.name)} data_type: TYPE_FP32 dims: {_dims(o, onnx_path)} }}"
                    for o in more
                ),
            ]
        )
        + " ]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US} }}",
        *(
            f"parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v)} }} }}"
            for k, v in params.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def model_name(info: BundleInfo) -> str:
    """The run name from bundle.json made safe for URLs and folder names, or 'covid_cxr'."""
    return info.name


def _dims(value: onnxlib.ValueInfoProto, path: Path) -> str:
    """`[ d1, d2, ... ]` of a graph input/output without its batch dimension, which must be dynamic."""
    dims = value.type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param or any(d.dim_value <= 0 for d in dims[1:]):
        raise BundleError(f"{path}: {value.name!r} needs a dynamic batch dimension and fixed others")
    return "[ " + ", ".join(str(d.dim_value) for d in dims[1:]) + " ]"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (ASCII, quotes and backslashes escaped)."""
    return json.dumps(text, ensure_ascii=True)


def _probabilities(predictor: Predictor) -> Probabilities:
    """The predictor's torch model wrapped exactly as model.onnx is: probabilities with temperature."""
    info = predictor.bundle_info
    return Probabilities(predictor.model, len(predictor.classes), info.temperature, info.head.output).eval()


def _opset(path: Path) -> int:
    """The default-domain opset of an ONNX file."""
    return max(op.version for op in onnxlib.load(str(path)).opset_import if op.domain in ("", "ai.onnx"))
