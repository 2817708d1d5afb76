"""Decode any supported image file into a uint8 array, with a pixel limit and clear errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covid_cxr.errors import ImageError

MAX_PIXELS = 100_000_000  # decompression-bomb guard: larger images are refused


def decode_bytes(
    data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF/DICOM bytes into uint8 (H, W) or (H, W, 3).

    Images over `max_pixels` (one DICOM frame) are refused before decoding. With `max_side`, larger
    images are reduced by a whole factor to a longer side between max_side and 2 * max_side, during
    decoding where the format allows (JPEG draft mode) and right after it otherwise.
    """
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    if is_dicom(data, name):
        from covid_cxr.data.dicom import decode_dicom_bytes

        return decode_dicom_bytes(data, name, max_pixels, max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:
                    raise ImageError(name, f"{im.width}x{im.height} exceeds the pixel limit of {max_pixels}")
                factor = reduce_factor(im.width, im.height, max_side)
                if factor > 1 and im.format == "JPEG":
                    im.draft(None, (im.width // factor, im.height // factor))  # DCT scaling: 1/2 .. 1/8
                im.load()
                return _to_uint8(_reduce(im, reduce_factor(im.width, im.height, max_side)), name)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unknown format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(name, f"decompression bomb refused ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(name, f"truncated or corrupt image ({exc})") from None


def is_dicom(data: bytes, name: str) -> bool:
    """True for DICOM bytes (the DICM preamble) or a .dcm file name."""
    return data[128:132] == b"DICM" or name.lower().endswith(".dcm")


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; raises ImageError naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(str(path), f"cannot read file ({exc.strerror or exc})") from None


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read and decode one file; raises ImageError naming the file and the problem."""
    return decode_bytes(read_bytes(path), str(Path(path)), max_pixels)


def reduce_factor(width: int, height: int, max_side: int | None) -> int:
    """The whole factor that brings the longer side to [max_side, 2 * max_side); 1 when no reduction."""
    return max(1, max(width, height) // max_side) if max_side else 1


def _reduce(im: Image.Image, factor: int) -> Image.Image:
    """`im` reduced by `factor` (box average), or unchanged for modes Pillow cannot reduce."""
    if factor <= 1:
        return im
    try:
        return im.reduce(factor)
    except ValueError:
        return im.convert("L" if im.mode.startswith("I") or im.mode == "F" else "RGB").reduce(factor)


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
