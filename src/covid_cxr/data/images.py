"""Decode any supported image file into a uint8 array, with a pixel limit and clear errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covid_cxr.errors import ImageError

MAX_PIXELS = 100_000_000  # decompression-bomb guard: larger images are refused


def decode_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF/DICOM bytes into uint8 (H, W) or (H, W, 3)."""
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    if data[128:132] == b"DICM" or name.lower().endswith(".dcm"):
        from covid_cxr.data.dicom import decode_dicom_bytes

        return decode_dicom_bytes(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:
                    raise ImageError(name, f"{im.width}x{im.height} exceeds the pixel limit of {max_pixels}")
                im.load()
                return _to_uint8(im, name)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unknown format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(name, f"decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(name, f"truncated or corrupt image ({exc})") from None


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode one file; raises ImageError naming the file and the problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(str(p), f"cannot read file ({exc.strerror or exc})") from None
    return decode_bytes(data, str(p), max_pixels)


def pil_to_array(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode as uint8 grey (H, W) or RGB (H, W, 3), as decoding a file gives."""
    return _to_uint8(im, "<PIL image>")


def _to_uint8(im: Image.Image, name: str) -> np.ndarray:
    """Convert a PIL image of any mode to uint8 grey (H, W) or RGB (H, W, 3)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return scaled.round().astype(np.uint8)
    if im.mode in ("L", "1", "P") and (im.mode != "P" or _palette_is_grey(im)):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if im.mode == "LA":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(name, f"unsupported pixel layout {arr.shape}")
    return arr


def _palette_is_grey(im: Image.Image) -> bool:
    """True when a palette image only uses grey colours."""
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
