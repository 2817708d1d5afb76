"""Acquisition cues: file format, colour mode, bit depth, size and name pattern predicting the label."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from covid_cxr.data.acquisition import FLAG_AUC, file_facts, name_pattern
from covid_cxr.data.checks import render_report, run_checks, save_report
from covid_cxr.data.readers import read_source

from .test_checks import manifest_of, pattern
from .test_dicom import make_dicom


def _folder(root: Path, classes: dict[str, tuple[str, str]], n: int = 20) -> Path:
    """n images per class, each class stored as (format, PIL mode) and named '<class>-<i>'."""
    for k, (label, (fmt, mode)) in enumerate(classes.items()):
        (root / label).mkdir(parents=True)
        for i in range(n):
            image = Image.fromarray(pattern(100 * k + i, 40, 40)).convert(mode)
            image.save(root / label / f"{label}-{i}.{fmt.lower()}", format=fmt)
    return root


@pytest.mark.parametrize(
    ("path", "label", "expected"),
    [
        ("data/COVID/COVID-12.png", "COVID", "{class}-#"),
        ("data/Normal/Normal-3.png", "Normal", "{class}-#"),
        ("data/Viral Pneumonia/Viral Pneumonia-7.png", "Viral Pneumonia", "{class}-#"),
        ("data/Viral Pneumonia/person1_virus_6.jpeg", "Viral Pneumonia", "person#_virus_#"),
        ("data/NORMAL/NORMAL2-IM-1427-0001.jpeg", "NORMAL", "{class}#-IM-#-#"),
        ("data/PNEUMONIA/person12_bacteria_3.jpeg", "bacterial", "person#_bacteria_#"),
        ("data/Lung_Opacity/Lung_Opacity-15.png", "Lung Opacity", "{class}-#"),
        ("data/normal/abnormal-1.png", "normal", "abnormal-#"),  # a word that only contains the name
    ],
)
def test_name_pattern_drops_digits_and_the_class_name(path: str, label: str, expected: str) -> None:
    assert name_pattern(path, label) == expected


def test_file_facts_read_the_real_format_not_the_extension(tmp_path: Path) -> None:
    grey = pattern(1)
    buffers = {}
    for name, image, fmt in (
        ("jpeg-named.png", Image.fromarray(grey).convert("RGB"), "JPEG"),
        ("grey16.png", Image.fromarray(grey.astype(np.uint16) * 256), "PNG"),
        ("grey.png", Image.fromarray(grey), "PNG"),
    ):
        out = io.BytesIO()
        image.save(out, format=fmt)
        buffers[name] = file_facts(out.getvalue(), name)
    assert (buffers["jpeg-named.png"].format, buffers["jpeg-named.png"].mode) == ("JPEG", "RGB")
    assert buffers["grey16.png"].bit_depth == 16 and buffers["grey16.png"].mode.startswith("I")
    grey_png = buffers["grey.png"]
    assert (grey_png.format, grey_png.mode, grey_png.bit_depth) == ("PNG", "L", 8)
    dicom = file_facts(make_dicom(grey.astype(np.uint16) * 16, BitsStored=12), "x.dcm")
    assert (dicom.format, dicom.mode, dicom.bit_depth) == ("DICOM", "MONOCHROME2", 12)


def test_same_format_classes_with_class_named_files_are_not_flagged(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"COVID": ("PNG", "L"), "Normal": ("PNG", "L")})
    cues = run_checks(manifest_of(root)).acquisition
    assert cues is not None and not cues.flag and cues.flagged == []
    assert cues.verdict.startswith("OK")
    assert all(v is not None and v <= FLAG_AUC for v in cues.auc.values())
    assert cues.distributions["COVID"]["name_pattern"] == {"{class}-#": 20}


def test_a_class_stored_as_rgb_jpeg_is_flagged_with_its_features(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": ("PNG", "L"), "b": ("PNG", "L"), "viral": ("JPEG", "RGB")})
    report = run_checks(manifest_of(root))
    cues = report.acquisition
    assert cues.flag and [f.label for f in cues.flagged] == ["viral"]
    assert cues.auc["viral"] == 1.0 and cues.auc["a"] <= FLAG_AUC
    assert set(cues.flagged[0].features) == {"format", "mode"}
    assert cues.feature_auc["format"]["viral"] == 1.0 and cues.feature_auc["size"]["viral"] <= FLAG_AUC
    assert cues.distributions["viral"]["format"] == {"JPEG": 20}
    assert cues.verdict.startswith("FLAG") and "viral" in cues.verdict and "file format JPEG" in cues.verdict
    saved = tmp_path / "checks.json"
    save_report(report, saved)
    data = json.loads(saved.read_text())["acquisition"]
    assert data["flag"] is True and data["flagged"][0]["label"] == "viral"
    assert data["distributions"]["a"]["mode"] == {"L": 20} and data["threshold"] == FLAG_AUC


def test_one_class_is_skipped_not_flagged(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": ("PNG", "L")}, n=4)
    cues = run_checks(manifest_of(root)).acquisition
    assert not cues.flag and cues.verdict.startswith("SKIP") and cues.auc["overall"] is None


def test_radiography_224_flags_viral_pneumonia_by_format_and_mode(shared_data: Path) -> None:
    manifest = read_source(shared_data / "radiography-224").manifest
    sample = manifest.groupby("label").head(40).reset_index(drop=True)  # 40 per class keeps it quick
    report = run_checks(sample)
    cues = report.acquisition
    assert [f.label for f in cues.flagged] == ["Viral Pneumonia"]
    assert {"format", "mode"} <= set(cues.flagged[0].features)
    assert cues.auc["Viral Pneumonia"] > 0.95 and cues.auc["COVID"] <= FLAG_AUC
    assert cues.distributions["COVID"]["format"] == {"PNG": 40}
    assert cues.distributions["Viral Pneumonia"]["mode"] == {"RGB": 40}
    console = Console(record=True, width=80, file=io.StringIO())
    render_report(report, console)
    text = console.export_text()
    assert "FLAG: Viral Pneumonia" in text and "one source is no all-clear" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_kermany_224_names_alone_separate_the_pneumonia_types(shared_data: Path) -> None:
    manifest = read_source(shared_data / "kermany-224", pneumonia_types=True).manifest
    manifest = manifest.groupby("label").head(30).reset_index(drop=True)
    cues = run_checks(manifest).acquisition
    assert cues.flag and all(f.features == ["name_pattern"] for f in cues.flagged)
    assert cues.feature_auc["format"]["viral"] <= FLAG_AUC
    assert "Only the file names differ" in cues.verdict
