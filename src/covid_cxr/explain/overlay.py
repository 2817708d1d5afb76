"""Heatmap rendering: back to the original image's size, colour, alpha blend, panel and PNG (OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from covid_cxr.errors import ConfigError, DataError

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "hot": cv2.COLORMAP_HOT,
    "inferno": cv2.COLORMAP_INFERNO,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
}


def content_box(height: int, width: int, size: int, keep_aspect: bool) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the original image inside the square model input (prepare's letterbox)."""
    if not keep_aspect:
        return 0, 0, size, size
    scale = size / max(height, width)
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - rows) // 2, (size - cols) // 2, rows, cols


def to_original(
    cam: np.ndarray, height: int, width: int, keep_aspect: bool, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """A square input-resolution CAM -> float32 (height, width) in [0, 1], letterbox padding cut off.

    ``box`` (top, left, rows, cols) is the part of the original the input showed (a lung crop); the
    CAM is put back there and is zero elsewhere. None: the whole image.
    """
    y0, x0, h, w = box or (0, 0, height, width)
    top, left, rows, cols = content_box(h, w, cam.shape[0], keep_aspect)
    crop = np.ascontiguousarray(cam[top : top + rows, left : left + cols], dtype=np.float32)
    inner = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    if (h, w) == (height, width):
        heat = inner
    else:
        heat = np.zeros((height, width), np.float32)
        heat[y0 : y0 + h, x0 : x0 + w] = inner - inner.min()
    heat = np.nan_to_num(heat, nan=0.0)
    heat -= heat.min()
    peak = float(heat.max())
    return (heat / peak if peak > 0 else heat).astype(np.float32)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 grey (H, W), (H, W, 1) or RGB (H, W, 3) image as uint8 RGB."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3))):
        raise DataError(f"expected a uint8 image (H, W), (H, W, 1) or (H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    return cv2.cvtColor(np.ascontiguousarray(arr.reshape(arr.shape[:2])), cv2.COLOR_GRAY2RGB)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] heatmap as a uint8 RGB image through an OpenCV colormap (jet, hot, ...)."""
    if colormap not in COLORMAPS:
        raise ConfigError(f"unknown colormap {colormap!r}; valid: {', '.join(COLORMAPS)}")
    scaled = np.uint8(np.round(np.clip(heatmap, 0.0, 1.0) * 255))
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def blend(image_rgb: np.ndarray, colored: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """alpha * colored + (1 - alpha) * image, both uint8 RGB of the same size."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(colored, alpha, image_rgb, 1.0 - alpha, 0.0)


def compose_panel(*images: np.ndarray) -> np.ndarray:
    """Same-height uint8 RGB images side by side (seed 003: original | heatmap | overlay)."""
    return np.hstack(images)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"OpenCV could not encode a {rgb.shape} {rgb.dtype} image as PNG")
    return buf.tobytes()


def thumbnail(rgb: np.ndarray, longest: int = 256) -> np.ndarray:
    """The image shrunk so its longest side is at most `longest` pixels (never enlarged)."""
    scale = longest / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
