"""Predictor: class probabilities from a loaded bundle, through ONNX Runtime or PyTorch."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from covid_cxr.bundle_info import BundleInfo
from covid_cxr.data.images import decode_bytes, load_image
from covid_cxr.data.preprocess import normalize, prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError
from covid_cxr.models.heads import num_outputs

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnx", "torch"]
ImageInput = str | Path | np.ndarray | bytes


class Probabilities(nn.Module):
    """Wrap a classifier so it returns (N, C) probabilities: softmax(logits / T), or sigmoid.

    A single-logit sigmoid head (binary) gives two columns ``[1 - p, p]``. This module is what
    ``model.onnx`` contains, so ONNX Runtime, Triton or KServe clients get probabilities directly.
    """

    def __init__(
        self, model: nn.Module, num_classes: int, temperature: float = 1.0, output: str = "softmax"
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.temperature = float(temperature)
        self.sigmoid = output == "sigmoid"
        self.single_logit = num_outputs(output, num_classes) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW float input -> (N, C) probabilities."""
        z = self.model(x) / self.temperature
        if not self.sigmoid:
            return torch.softmax(z, dim=1)
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1) if self.single_logit else p


class Predictor:
    """Class probabilities for raw images, with the preprocessing the model was trained with.

    Built by ``covid_cxr.load_bundle(path)``; thread-safe for concurrent ``predict`` calls.

    Example:
        >>> predictor = covid_cxr.load_bundle("runs/demo/bundle")
        >>> predictor.predict(["chest.png"])  # (1, C) probabilities
    """

    def __init__(
        self,
        model: nn.Module,
        info: BundleInfo,
        onnx_path: Path | None = None,
        backend: Backend = "auto",
        threads: int = 0,
    ) -> None:
        self.bundle_info = info
        self.info: dict[str, Any] = info.model_dump(mode="json")  # bundle.json as a plain dict
        self.classes: list[str] = list(info.class_names)
        self.preprocess: Preprocess = info.preprocess
        self.model = model.eval()
        self._probabilities = Probabilities(
            model, len(self.classes), info.temperature, info.head.output
        ).eval()
        self.lock = threading.Lock()
        self._session = _onnx_session(onnx_path, backend, threads)
        self.backend = "onnx" if self._session is not None else "torch"
        if self.backend == "torch":
            self.model.to(memory_format=torch.channels_last)
        log.info("predictor ready: %d classes, backend %s", len(self.classes), self.backend)

    def predict(self, images: Sequence[ImageInput], batch_size: int = 16) -> np.ndarray:
        """Decode, preprocess and classify images (paths, encoded bytes or uint8 arrays) -> (N, C)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = [self.predict_tensor(batch) for batch in self._batches(images, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict_tensor(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Classify already preprocessed, normalised NCHW float32 input -> (N, C) probabilities."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        arr = np.ascontiguousarray(x, dtype=np.float32)
        expected = (self.preprocess.channels, self.preprocess.size, self.preprocess.size)
        if arr.ndim != 4 or arr.shape[1:] != expected:
            raise ValueError(f"expected input of shape (N, {', '.join(map(str, expected))}), got {arr.shape}")
        if self._session is not None:
            return self._session.run(None, {self._session.get_inputs()[0].name: arr})[0]
        tensor = torch.from_numpy(arr).contiguous(memory_format=torch.channels_last)
        with self.lock, torch.inference_mode():
            return self._probabilities(tensor).float().numpy()

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 16) -> list[dict[str, Any]]:
        """Per-file results for the CLI: path, probability per class and the predicted class."""
        probs = self.predict(paths, batch_size=batch_size)
        return [
            {
                "path": str(path),
                "probabilities": {c: float(p) for c, p in zip(self.classes, row, strict=True)},
                "predicted": self.classes[int(np.argmax(row))],
            }
            for path, row in zip(paths, probs, strict=True)
        ]

    def explain(
        self, image: ImageInput, target: str | int | None = None, method: str = "gradcam", **options: Any
    ) -> Any:
        """Grad-CAM for one image: probabilities, heatmap at the original resolution, overlay and panel."""
        from covid_cxr.explain.cam import explain  # lazy: explain imports this module

        return explain(self, _decode(image), method=method, target=target, **options)

    def _batches(self, images: Sequence[ImageInput], batch_size: int) -> Iterator[torch.Tensor]:
        """Decode and prepare lazily, one batch at a time (memory stays bounded), on one thread per core
        (PIL and OpenCV release the GIL: 16 PNGs of 1024 px ~2x faster on 2 cores); normalise per batch."""
        spec, prepared = self.preprocess, partial(_prepared, spec=self.preprocess)
        workers = max(1, min(batch_size, len(images), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            run = pool.map if workers > 1 else map  # one image: no thread
            for start in range(0, len(images), batch_size):
                yield normalize(np.stack(list(run(prepared, images[start : start + batch_size]))), spec)


def _prepared(item: ImageInput, spec: Preprocess) -> np.ndarray:
    """One input decoded and prepared: the uint8 (size, size, channels) array."""
    return prepare(_decode(item), spec)


def _decode(item: ImageInput) -> np.ndarray:
    """Turn one input (path, encoded bytes or array) into a decoded image array."""
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, bytes | bytearray):
        return decode_bytes(bytes(item))
    if isinstance(item, str | Path):
        return load_image(item)
    raise TypeError(f"expected a path, bytes or numpy array, got {type(item).__name__}")


def _onnx_session(onnx_path: Path | None, backend: Backend, threads: int) -> Any | None:
    """An ONNX Runtime CPU session, or None when the torch backend is chosen or ONNX is unavailable.

    ``threads=0`` lets ONNX Runtime use one intra-op thread per physical core. Idle intra-op threads
    sleep instead of spinning, which took CPU from the threads decoding concurrent requests: the server
    answers 19 % more requests/s with 8 clients on 2 cores (benchmarks/server_load.py).
    """
    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
    if backend == "torch":
        return None
    if onnx_path is None:
        if backend == "onnx":
            raise BundleError("backend 'onnx' requested but the bundle has no model.onnx")
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        if backend == "onnx":
            raise
        log.warning("onnxruntime is not installed; using the torch backend")
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors share no base class below Exception
        raise BundleError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc
