"""Segment the lung fields of any chest radiograph with the shipped (or a trained) lung segmenter."""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covid_cxr.data.preprocess import prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import ConfigError
from covid_cxr.lungs.data import to_input
from covid_cxr.lungs.model import LungNet
from covid_cxr.lungs.quality import clean_mask

WEIGHTS_FILE = "lungs-lite0.pt"
WEIGHTS_SHA256 = "9f46434e3829d1d9423a9f28dfded24179f68b19073348f2d6c89d59698ef732"
FORMAT_VERSION = 1
_EXPORT_LOCK = threading.Lock()


@dataclass
class LungSegmenter:
    """A LungNet with its input size: ``segmenter(image)`` gives a 0/1 mask at the image's own size."""

    net: LungNet
    size: int
    session: Any | None = None  # the same network in ONNX Runtime (load_segmenter builds it)

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Lung probability per pixel, float32 (H, W) at the image's own height and width."""
        grey = prepare(image, Preprocess(size=self.size, channels=1))[:, :, 0]
        x = to_input(grey)[None]
        if self.session is not None:
            logits = torch.from_numpy(self.session.run(None, {"image": x.numpy()})[0])
        else:
            logits = self.net(x)
        full = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return torch.sigmoid(full)[0, 0].numpy()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 0/1 (H, W) lung mask: both lungs, holes filled, specks removed."""
        return clean_mask(self.probabilities(image) >= 0.5)


def segment(image: np.ndarray) -> np.ndarray:
    """The shipped segmenter's uint8 0/1 lung mask of a uint8 (H, W) or (H, W, 3) image, at its size."""
    return load_segmenter()(image)


@lru_cache(maxsize=4)
def load_segmenter(path: str | None = None) -> LungSegmenter:
    """The shipped weights (SHA-256 checked) or a file written by ``covid-cxr lungs train``."""
    data = _shipped_bytes() if path is None else Path(path).read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"{path or WEIGHTS_FILE}: not a lung segmenter weights file of format {FORMAT_VERSION}"
        )
    net = LungNet(imagenet=True)
    net.decoder.load_state_dict({k: v.float() for k, v in state["decoder"].items()})
    net.eval()
    size = int(state["size"])
    with _EXPORT_LOCK:  # the ONNX exporter is not re-entrant: the first gated images arrive on threads
        return LungSegmenter(net, size, _onnx_session(net, size))


def _onnx_session(net: LungNet, size: int) -> Any | None:
    """The network exported in memory to an ONNX Runtime session (7 ms against torch's 24 ms a 192 px
    image on one CPU core), or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        example = torch.zeros(1, 3, size, size)
        torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=17, input_names=["image"])
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def save_weights(net: LungNet, size: int, path: str | Path) -> str:
    """Write the decoder (fp16) and input size to ``path``; returns the file's SHA-256."""
    from covid_cxr.io import atomic_write_bytes

    buffer = io.BytesIO()
    decoder = {
        k: v.detach().half() if v.is_floating_point() else v for k, v in net.decoder.state_dict().items()
    }
    torch.save({"format": FORMAT_VERSION, "size": size, "decoder": decoder}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _shipped_bytes() -> bytes:
    """The packaged weights file, refused unless its SHA-256 is the one this release was built with."""
    ref = resources.files("covid_cxr.lungs") / "weights" / WEIGHTS_FILE
    if not ref.is_file():
        raise ConfigError(f"{ref}: the shipped lung segmenter weights are missing; reinstall covid-cxr")
    data = ref.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ConfigError(
            f"{ref}: SHA-256 {digest[:16]}... is not the shipped {WEIGHTS_SHA256[:16]}...; corrupt"
        )
    return data
