"""Predictor: class probabilities from a loaded bundle, through ONNX Runtime or PyTorch."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from covid_cxr.bundle_info import BundleInfo
from covid_cxr.data.images import decode_bytes, load_image, pil_to_array
from covid_cxr.data.preprocess import normalize, prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError, ImageError
from covid_cxr.models.heads import num_outputs

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnx", "torch"]
ImageInput = Any  # str | Path | bytes | numpy (H, W) or (H, W, C) | PIL.Image.Image
_CHANNELS_LAST = (1, 3, 4)


@dataclass(frozen=True)
class Prediction:
    """One image's result, like a Hugging Face pipeline's: class probabilities and the top class.

    Example:
        >>> result = predictor.predict("chest.png")
        >>> result.label, round(result.score, 3), result.probabilities
        ('covid', 0.912, {'covid': 0.912, 'normal': 0.088})
    """

    probabilities: dict[str, float]
    path: str | None = None

    @property
    def classes(self) -> list[str]:
        """The bundle's class names, in model output order."""
        return list(self.probabilities)

    @property
    def top(self) -> tuple[str, float]:
        """(label, probability) of the most probable class."""
        return max(self.probabilities.items(), key=lambda item: item[1])

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.top[0]

    @property
    def score(self) -> float:
        """The probability of the most probable class."""
        return self.top[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: path, probabilities, predicted class and its probability."""
        return {"path": self.path, "probabilities": self.probabilities, "predicted": self.label}


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
        >>> predictor.predict("chest.png").label  # one image -> one Prediction
        'covid'
        >>> [r.score for r in predictor.predict(["a.png", "b.png"])]  # a list -> a list
        [0.91, 0.64]
        >>> predictor.predict_proba(["a.png", "b.png"]).shape  # (N, C) probabilities
        (2, 2)
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
        log.debug("predictor ready: %d classes, backend %s", len(self.classes), self.backend)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 16
    ) -> Prediction | list[Prediction]:
        """One image (path, bytes, numpy (H, W) or (H, W, C), PIL) -> one Prediction; a list -> a list."""
        single = _is_single(images)
        batch = [images] if single else list(images)
        rows = self.predict_proba(batch, batch_size=batch_size)
        results = [self._result(row, item) for row, item in zip(rows, batch, strict=True)]
        return results[0] if single else results

    def predict_proba(self, images: Sequence[ImageInput], batch_size: int = 16) -> np.ndarray:
        """Decode, preprocess and classify a sequence of images -> (N, C) probabilities."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch = [images] if _is_single(images) else list(images)
        out = [self.predict_tensor(x) for x in self._batches(batch, batch_size)]
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

    def predict_files(
        self, paths: Sequence[str | Path], batch_size: int = 16
    ) -> tuple[list[Prediction], dict[str, str]]:
        """Every readable file classified, in order; the unreadable ones mapped to the reason."""
        results: list[Prediction] = []
        failures: dict[str, str] = {}
        workers = max(1, min(batch_size, len(paths), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = [str(p) for p in paths[start : start + batch_size]]
                decoded = dict(zip(chunk, pool.map(self._try_prepare, chunk), strict=True))
                failures.update({p: d for p, d in decoded.items() if isinstance(d, str)})
                ok = [p for p, d in decoded.items() if not isinstance(d, str)]
                if ok:
                    batch = normalize(np.stack([decoded[p] for p in ok]), self.preprocess)
                    probs = self.predict_tensor(batch)
                    results += [self._result(row, p) for row, p in zip(probs, ok, strict=True)]
        return results, failures

    def _try_prepare(self, path: str) -> np.ndarray | str:
        """The prepared image of `path`, or the reason it cannot be read."""
        try:
            return _prepared(path, self.preprocess)
        except ImageError as exc:
            return exc.reason

    def _result(self, row: np.ndarray, item: ImageInput) -> Prediction:
        """A Prediction from one probability row; the path kept when the input was one."""
        path = str(item) if isinstance(item, str | Path) else None
        return Prediction({c: float(p) for c, p in zip(self.classes, row, strict=True)}, path)

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


def _is_single(images: Any) -> bool:
    """True for one image (path, bytes, PIL image, (H, W) or (H, W, C) array), False for a sequence.

    A 3-D array whose last axis is not 1, 3 or 4 channels is refused rather than guessed.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[2] in _CHANNELS_LAST):
            return True
        if images.ndim == 4:
            return False
        raise ValueError(
            f"cannot tell one image from a batch in an array of shape {images.shape}: pass one (H, W) or "
            "(H, W, C) image, an (N, H, W, C) array, or a list of images"
        )
    return isinstance(images, str | Path | bytes | bytearray) or _is_pil(images)


def _is_pil(item: Any) -> bool:
    """True for a PIL image (PIL is imported only when the caller already has it loaded)."""
    return type(item).__module__.startswith("PIL.")


def _decode(item: ImageInput) -> np.ndarray:
    """Turn one input (path, encoded bytes, array or PIL image) into a decoded image array."""
    if isinstance(item, np.ndarray):
        return item[..., :3] if item.ndim == 3 and item.shape[2] == 4 else item  # RGBA: alpha dropped
    if isinstance(item, bytes | bytearray):
        return decode_bytes(bytes(item))
    if isinstance(item, str | Path):
        return load_image(item)
    if _is_pil(item):
        return pil_to_array(item)
    raise TypeError(f"expected a path, bytes, numpy array or PIL image, got {type(item).__name__}")


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
