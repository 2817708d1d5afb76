"""DICOM decoding with pydicom: modality LUT, VOI windowing, MONOCHROME1 inversion, 8-bit output.

Tag values (patient data) are never logged and never put into error messages.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from covid_cxr.data.images import MAX_PIXELS
from covid_cxr.errors import ImageError

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def decode_dicom_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode DICOM bytes into uint8 (H, W) grey or (H, W, 3) RGB; raises ImageError."""
    ds = _read_dataset(data, name)
    pixels = _first_frame(_pixel_array(ds, name), ds)
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


def _read_dataset(data: bytes, name: str) -> pydicom.Dataset:
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
    if rows * cols > MAX_PIXELS:
        raise ImageError(name, f"{cols}x{rows} exceeds the pixel limit of {MAX_PIXELS}")
    return ds


def _pixel_array(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The decoded pixel data (YBR converted to RGB by pydicom)."""
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing codec, truncated data, bad attributes ...
        raise ImageError(name, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None


def _first_frame(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The first frame of a multi-frame image, else the image itself."""
    return pixels[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels


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
