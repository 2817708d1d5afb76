"""DICOM decoding: rescale, windowing, MONOCHROME1, RGB, multi-frame, header helpers and errors."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from covid_cxr.data.dicom import decode_dicom_bytes, dicom_patient_id, dicom_size
from covid_cxr.data.images import load_image
from covid_cxr.data.manifest import image_size
from covid_cxr.errors import ImageError


def make_dicom(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", pixel_data: bool = True, **tags: object
) -> bytes:
    """Bytes of a minimal DICOM file holding pixels (uint8/uint16, grey or RGB, optional frames)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    rgb = photometric == "RGB"
    frames = pixels.ndim == (4 if rgb else 3)
    ds.Rows, ds.Columns = pixels.shape[1:3] if frames else pixels.shape[:2]
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


RAMP = np.array([[0, 1360], [2720, 4080]], dtype=np.uint16)  # min-max maps to 0, 85, 170, 255


def test_monochrome2_16bit_is_min_max_scaled_to_8bit():
    out = decode_dicom_bytes(make_dicom(RAMP), "a.dcm")
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, (RAMP.astype(float) / RAMP.max() * 255).round())


def test_monochrome1_is_inverted_brightest_becomes_darkest():
    mono2 = decode_dicom_bytes(make_dicom(RAMP), "a.dcm")
    mono1 = decode_dicom_bytes(make_dicom(RAMP, "MONOCHROME1"), "b.dcm")
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[1, 1] == 0 and mono1[0, 0] == 255


def test_rescale_then_window_clips_outside_values():
    # stored s -> 2*s - 1000: -1000, -500, 0, 500, 1000; window [-500, 500] in rescaled units
    stored = np.array([[0, 250, 500, 750, 1000]], dtype=np.uint16)
    data = make_dicom(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1001)
    out = decode_dicom_bytes(data, "w.dcm")[0]
    assert out[0] == 0 and out[1] == 0  # at or below the window's low edge
    assert out[3] == 255 and out[4] == 255  # at or above its high edge (plain min-max would give 191)
    assert abs(int(out[2]) - 128) <= 1  # the window centre maps to mid-grey


def test_window_without_rescale_uses_stored_values():
    stored = np.array([[0, 50, 150, 250, 300]], dtype=np.uint16)  # window [100, 200]
    out = decode_dicom_bytes(make_dicom(stored, WindowCenter=150, WindowWidth=101), "w.dcm")[0]
    np.testing.assert_array_equal(out[[0, 1, 3, 4]], [0, 0, 255, 255])
    assert abs(int(out[2]) - 128) <= 1


def test_8bit_grey_without_luts_keeps_its_values():
    pixels = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_dicom_bytes(make_dicom(pixels), "g.dcm"), pixels)


def test_rgb_dicom_is_returned_as_hwc():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    out = decode_dicom_bytes(make_dicom(pixels, "RGB"), "rgb.dcm")
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out, pixels)


def test_multi_frame_gives_the_first_frame():
    frames = np.stack([RAMP, RAMP[::-1]])
    out = decode_dicom_bytes(make_dicom(frames), "mf.dcm")
    np.testing.assert_array_equal(out, decode_dicom_bytes(make_dicom(RAMP), "a.dcm"))


def test_load_image_routes_dcm_files_to_the_decoder(tmp_path: Path):
    path = tmp_path / "x.dcm"
    path.write_bytes(make_dicom(RAMP, "MONOCHROME1"))
    np.testing.assert_array_equal(load_image(path), decode_dicom_bytes(path.read_bytes(), str(path)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not a dicom file at all" * 10, "not a DICOM"),
        (make_dicom(RAMP, pixel_data=False, PatientID="SECRET-42"), "no pixel data"),
        (make_dicom(RAMP)[:-3], "cannot decode DICOM pixel data"),
    ],
)
def test_broken_files_raise_image_error_naming_file_and_reason(data: bytes, reason: str):
    with pytest.raises(ImageError) as info:
        decode_dicom_bytes(data, "bad.dcm")
    assert info.value.path == "bad.dcm"
    assert reason in info.value.reason
    assert "SECRET-42" not in str(info.value)


def test_size_and_patient_id_from_the_header(tmp_path: Path):
    path = tmp_path / "p.dcm"
    path.write_bytes(make_dicom(np.zeros((2, 3), np.uint16), PatientID="PAT-7"))
    assert dicom_size(path) == (3, 2)
    assert image_size(path) == (3, 2)
    assert dicom_patient_id(path) == "PAT-7"


def test_header_helpers_on_unreadable_or_anonymous_files(tmp_path: Path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk")
    anonymous = tmp_path / "anon.dcm"
    anonymous.write_bytes(make_dicom(RAMP))
    assert dicom_size(junk) == (0, 0)
    assert dicom_patient_id(junk) is None
    assert dicom_patient_id(anonymous) is None


def test_no_tag_value_is_logged(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG):
        decode_dicom_bytes(make_dicom(RAMP, PatientID="SECRET-42", PatientName="Doe^Jane"), "a.dcm")
    assert "SECRET-42" not in caplog.text and "Doe" not in caplog.text
