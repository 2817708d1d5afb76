"""Predictor: class probabilities from a loaded bundle, through ONNX Runtime or PyTorch."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from covid_cxr.bundle_info import ONNX_FEATURES, BundleInfo
from covid_cxr.data.images import decode_bytes, load_image, pil_to_array
from covid_cxr.data.preprocess import normalize, prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import BundleError, ImageError
from covid_cxr.models.heads import num_outputs
from covid_cxr.reliability.assess import Reliability
from covid_cxr.reliability.gate import GateResult, check_image

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnx", "torch"]
ImageInput = Any  # str | Path | bytes | numpy (H, W) or (H, W, C) | PIL.Image.Image
_CHANNELS_LAST = (1, 3, 4)


@dataclass(frozen=True)
class Prediction:
    """One image's result: class probabilities, the top class, and whether to trust it at all.

    ``prediction_set``: the classes of the bundle's conformal set (None without one); ``ood``: score,
    threshold and flagged of the out-of-distribution detector; ``gate``: the input checks' reason codes;
    ``abstain``: True when gated, flagged or the set is not one class (``abstain_reasons`` say which).

    Example:
        >>> result = predictor.predict("chest.png")
        >>> result.label, round(result.score, 3), result.abstain
        ('covid', 0.912, False)
    """

    probabilities: dict[str, float]
    path: str | None = None
    prediction_set: list[str] | None = None
    ood: dict[str, Any] | None = None
    gate: dict[str, list[str]] | None = None
    abstain: bool | None = None
    abstain_reasons: list[str] = field(default_factory=list)

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

    def reliability(self) -> dict[str, Any]:
        """JSON-ready: prediction_set, ood, gate, abstain and abstain_reasons."""
        return {
            "prediction_set": self.prediction_set,
            "ood": self.ood,
            "gate": self.gate,
            "abstain": self.abstain,
            "abstain_reasons": list(self.abstain_reasons),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: path, probabilities, the predicted class and the reliability fields."""
        return {
            "path": self.path,
            "probabilities": self.probabilities,
            "predicted": self.label,
            **self.reliability(),
        }


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
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.sigmoid = output == "sigmoid"
        self.single_logit = num_outputs(output, num_classes) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW float input -> (N, C) probabilities."""
        return self.from_logits(self.model(x))

    def with_features(self) -> WithFeatures:
        """The same model and temperature, also returning the pooled features."""
        output = "sigmoid" if self.sigmoid else "softmax"
        return WithFeatures(self.model, self.num_classes, self.temperature, output).eval()

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, outputs) logits -> (N, C) probabilities at the temperature."""
        z = logits / self.temperature
        if not self.sigmoid:
            return torch.softmax(z, dim=1)
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1) if self.single_logit else p


class WithFeatures(Probabilities):
    """Probabilities and the pooled features the OOD detector reads, from one forward pass.

    This is what ``model.onnx`` holds: outputs ``probabilities`` (N, C) and ``features`` (N, D).
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Normalised NCHW float input -> ((N, C) probabilities, (N, D) features)."""
        feature_map = self.model.forward_features(x)
        features = self.model.head.pool(feature_map).flatten(1)
        return self.from_logits(self.model.forward_head(feature_map)), features


class Predictor:
    """Class probabilities for raw images, with the preprocessing the model was trained with.

    Built by ``covid_cxr.load_bundle(path)``; thread-safe for concurrent ``predict`` calls. ``predict``
    and ``predict_files`` also run the input gate (with the lung-segmenter check unless
    ``frontal_check`` is False) and the bundle's OOD detector and conformal sets; ``predict_proba``
    and ``predict_tensor`` give probabilities only.

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
        reliability: Reliability | None = None,
        frontal_check: bool = True,
    ) -> None:
        self.bundle_info = info
        self.info: dict[str, Any] = info.model_dump(mode="json")  # bundle.json as a plain dict
        self.classes: list[str] = list(info.class_names)
        self.preprocess: Preprocess = info.preprocess
        self.model = model.eval()
        self._probabilities = Probabilities(
            model, len(self.classes), info.temperature, info.head.output
        ).eval()
        self._with_features = self._probabilities.with_features()
        self.reliability = reliability or Reliability(info, None)
        self.frontal_check = frontal_check
        self.lock = threading.Lock()
        self._session = _onnx_session(onnx_path, backend, threads)
        self.backend = "onnx" if self._session is not None else "torch"
        self._onnx_outputs = [o.name for o in self._session.get_outputs()] if self._session else []
        if self.backend == "torch":
            self.model.to(memory_format=torch.channels_last)
        log.debug("predictor ready: %d classes, backend %s", len(self.classes), self.backend)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 16
    ) -> Prediction | list[Prediction]:
        """One image (path, bytes, numpy (H, W) or (H, W, C), PIL) -> one Prediction; a list -> a list."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        single = _is_single(images)
        batch = [images] if single else list(images)
        results: list[Prediction] = []
        with ThreadPoolExecutor(max_workers=_workers(batch_size, len(batch))) as pool:
            for start in range(0, len(batch), batch_size):
                items = batch[start : start + batch_size]
                results += self._results(list(pool.map(self._gated, items)), items)
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
        arr = self._checked(x)
        if self._session is not None:
            return self._session.run(self._onnx_outputs[:1], {self._session.get_inputs()[0].name: arr})[0]
        with self.lock, torch.inference_mode():
            return self._probabilities(_channels_last(arr)).float().numpy()

    def predict_outputs(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed, normalised NCHW input -> ((N, C) probabilities, (N, D) pooled OOD features)."""
        arr = self._checked(x)
        if self._session is not None and ONNX_FEATURES in self._onnx_outputs:
            probs, features = self._session.run(None, {self._session.get_inputs()[0].name: arr})[:2]
            return probs, features
        if self._session is not None and self.reliability.detector is None:  # no features needed
            return self.predict_tensor(arr), np.zeros((len(arr), 0), np.float32)
        with self.lock, torch.inference_mode():  # torch backend, or a model.onnx without features
            probs, features = self._with_features(_channels_last(arr))
        probs = self.predict_tensor(arr) if self._session is not None else probs.float().numpy()
        return probs, features.float().numpy()

    def gate(self, image: np.ndarray) -> GateResult:
        """The input gate's checks on one decoded image (reason codes, and the checks that did not run)."""
        return check_image(image, self.preprocess.size, frontal=self.frontal_check)

    def _checked(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """The input as contiguous float32 (N, C, H, W); ValueError naming the expected shape."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        arr = np.ascontiguousarray(x, dtype=np.float32)
        expected = (self.preprocess.channels, self.preprocess.size, self.preprocess.size)
        if arr.ndim != 4 or arr.shape[1:] != expected:
            raise ValueError(f"expected input of shape (N, {', '.join(map(str, expected))}), got {arr.shape}")
        return arr

    def predict_files(
        self, paths: Sequence[str | Path], batch_size: int = 16
    ) -> tuple[list[Prediction], dict[str, str]]:
        """Every readable file classified, in order; the unreadable ones mapped to the reason."""
        results: list[Prediction] = []
        failures: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=_workers(batch_size, len(paths))) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = [str(p) for p in paths[start : start + batch_size]]
                decoded = dict(zip(chunk, pool.map(self._try_gated, chunk), strict=True))
                failures.update({p: d for p, d in decoded.items() if isinstance(d, str)})
                ok = [p for p, d in decoded.items() if not isinstance(d, str)]
                if ok:
                    results += self._results([decoded[p] for p in ok], ok)  # type: ignore[misc]
        return results, failures

    def _gated(self, item: ImageInput) -> tuple[np.ndarray, GateResult]:
        """One input decoded, gated and prepared: (uint8 (size, size, channels) array, gate result)."""
        image = _decode(item)
        return prepare(image, self.preprocess), self.gate(image)

    def _try_gated(self, path: str) -> tuple[np.ndarray, GateResult] | str:
        """The prepared image of `path` and its gate result, or the reason it cannot be read."""
        try:
            return self._gated(path)
        except ImageError as exc:
            return exc.reason

    def _results(
        self, gated: list[tuple[np.ndarray, GateResult]], items: Sequence[ImageInput]
    ) -> list[Prediction]:
        """Classify prepared images in one batch and attach the gate, OOD and conformal verdicts."""
        x = normalize(np.stack([prepared for prepared, _ in gated]), self.preprocess)
        probs, features = self.predict_outputs(x)
        verdicts = self.reliability.assess(probs, features, [gate for _, gate in gated])
        return [
            Prediction(
                {c: float(p) for c, p in zip(self.classes, row, strict=True)},
                str(item) if isinstance(item, str | Path) else None,
                **verdict,
            )
            for row, item, verdict in zip(probs, items, verdicts, strict=True)
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
        workers = _workers(batch_size, len(images))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            run = pool.map if workers > 1 else map  # one image: no thread
            for start in range(0, len(images), batch_size):
                yield normalize(np.stack(list(run(prepared, images[start : start + batch_size]))), spec)


def _workers(batch_size: int, n: int) -> int:
    """Decode threads: one per core, at most one per image of a batch."""
    return max(1, min(batch_size, n, os.cpu_count() or 1))


def _channels_last(arr: np.ndarray) -> torch.Tensor:
    """A float32 NCHW array as a channels-last tensor (the faster layout for convolutions on CPU)."""
    return torch.from_numpy(arr).contiguous(memory_format=torch.channels_last)


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
