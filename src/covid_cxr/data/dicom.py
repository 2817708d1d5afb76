"""DICOM decoding with pydicom: modality LUT, VOI windowing, MONOCHROME1 inversion, 8-bit output.

Tag values (patient data) are never logged and never put into error messages.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from covid_cxr.data.images import MAX_PIXELS, reduce_factor
from covid_cxr.errors import ImageError

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CV_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))


def decode_dicom_bytes(
    data: bytes, name: str, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
    """Decode DICOM bytes into uint8 (H, W) grey or (H, W, 3) RGB; raises ImageError.

    Only the first frame is decoded; a frame over `max_pixels` is refused before decoding, and with
    `max_side` the frame is reduced by a whole factor before the (float) LUTs are applied.
    """
    ds = _read_dataset(data, name, max_pixels)
    pixels = _shrunk(_pixel_array(ds, name), max_side)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return _min_max_uint8(apply_color_lut(pixels, ds))
    if pixels.ndim == 3:
        return _min_max_uint8(pixels[..., :3])
    if pixels.ndim != 2:
        raise ImageError(name, f"unsupported DICOM pixel layout {pixels.shape}")
    grey = _min_max_uint8(_grey_values(pixels, ds, name))
    return 255 - grey if photometric == "MONOCHROME1" else grey


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the Columns/Rows tags, or (0, 0) when the header cannot be read."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        return int(ds.Columns), int(ds.Rows)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the checks, not here
        return (0, 0)


def dicom_patient_id(path: str | Path) -> str | None:
    """The PatientID tag as a string, or None when absent, empty or unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - an unreadable header simply has no patient id
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def quiet_pydicom_log() -> None:
    """Withhold the text of pydicom's log records, which can quote element values (patient data).

    pydicom logs each warning before raising it; the server calls this at startup and turns the
    warnings themselves off (warnings.filterwarnings), so neither reaches its log.
    """
    logger = logging.getLogger("pydicom")
    if _withhold_text not in logger.filters:
        logger.addFilter(_withhold_text)


def _withhold_text(record: logging.LogRecord) -> bool:
    """Replace a record's message (which may hold element values) by a fixed text."""
    record.msg, record.args = "pydicom %s (text withheld: it may quote DICOM values)", (record.levelname,)
    return True


def _read_dataset(data: bytes, name: str, max_pixels: int) -> pydicom.Dataset:
    """Parse the DICOM header and check that there is pixel data of an acceptable size."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise ImageError(name, "not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a corrupt header
        raise ImageError(name, f"corrupt DICOM header ({type(exc).__name__})") from None
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageError(name, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise ImageError(name, f"{cols}x{rows} exceeds the pixel limit of {max_pixels}")
    return ds


def _pixel_array(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The first frame's decoded pixels (YBR converted to RGB by pydicom); other frames stay encoded."""
    try:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing codec, truncated data, bad attributes ...
        raise ImageError(name, f"cannot decode DICOM pixel data ({type(exc).__name__})") from None


def _shrunk(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """`pixels` reduced by reduce_factor in their own dtype, before any float conversion: box-averaged
    where OpenCV can, else subsampled."""
    factor = reduce_factor(pixels.shape[1], pixels.shape[0], max_side)
    if factor <= 1:
        return pixels
    if pixels.dtype in _CV_DTYPES and (pixels.ndim == 2 or pixels.shape[2] <= 4):
        size = (max(1, pixels.shape[1] // factor), max(1, pixels.shape[0] // factor))
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(pixels[::factor, ::factor])


def _grey_values(pixels: np.ndarray, ds: pydicom.Dataset, name: str) -> np.ndarray:
    """Apply the modality LUT (rescale slope/intercept) then the VOI LUT or window."""
    try:
        return apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    except (ValueError, AttributeError, IndexError, NotImplementedError) as exc:
        raise ImageError(name, f"invalid DICOM LUT or window attributes ({exc})") from None


def _min_max_uint8(values: np.ndarray) -> np.ndarray:
    """8-bit values unchanged; others stretched linearly to 0..255 (all zeros when constant)."""
    if values.dtype == np.uint8:
        return values
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0).round().astype(np.uint8)
