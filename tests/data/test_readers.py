"""Dataset readers: tiny synthetic trees for every layout, and the acceptance numbers on shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_cxr.data.manifest import COLUMNS
from covid_cxr.data.readers import READERS, detect_reader, read_source, reader_options
from covid_cxr.data.readers_common import name_key
from covid_cxr.errors import ConfigError, DataError
from tests.data.test_dicom import RAMP, make_dicom


def png(path: Path, size: tuple[int, int] = (32, 32), value: int = 0) -> Path:
    """Write a small grey PNG (any extension Pillow knows) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path, format=fmt)
    return path


def sheet(path: Path, names: list[str], urls: list[str] | None = None) -> None:
    """Write a Radiography Database style metadata sheet."""
    frame = pd.DataFrame({"FILE NAME": names, "FORMAT": "PNG", "SIZE": "256*256"})
    if urls is not None:
        frame["URL"] = urls
    frame.to_excel(path, index=False)


def problems_of(result) -> dict[str, str]:
    """Problems as {file name or sheet entry: reason}."""
    return {Path(p.path).name: p.reason for p in result.problems}


# ---------------------------------------------------------------- folder


def test_folder_reader_labels_walks_and_skips(tmp_path: Path):
    root = tmp_path / "myset"
    png(root / "cat" / "a.PNG", (40, 30))
    png(root / "cat" / "deep" / "er" / "b.JpG")
    png(root / "cat" / "Masks" / "a.png")
    png(root / "dog" / "c.tiff")
    png(root / "dog" / ".hidden.png")
    png(root / ".cache" / "d.png")
    (root / "dog" / "notes.txt").write_text("x")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    (root / "scan").mkdir()
    (root / "scan" / "s.DCM").write_bytes(make_dicom(RAMP, PatientID="P-9"))
    png(root / "loose.png")

    result = read_source(root)
    m = result.manifest
    assert list(m.columns) == COLUMNS
    names = dict(zip(m["path"].map(lambda p: Path(p).name), m["label"], strict=True))
    assert names == {"a.PNG": "cat", "b.JpG": "cat", "c.tiff": "dog", "broken.png": "dog", "s.DCM": "scan"}
    row = m.set_index(m["path"].map(lambda p: Path(p).name))
    assert (row.loc["a.PNG", "width"], row.loc["a.PNG", "height"]) == (40, 30)
    assert (row.loc["broken.png", "width"], row.loc["broken.png", "height"]) == (0, 0)
    assert (row.loc["s.DCM", "width"], row.loc["s.DCM", "height"]) == (2, 2)
    assert row.loc["s.DCM", "patient_id"] == "P-9"
    assert row.loc["a.PNG", "patient_id"] == "a"
    assert set(m["source"]) == {"myset"}
    assert problems_of(result) == {"loose.png": "image is not inside a class folder; left out"}
    assert result.counts == {"unlabeled": 1, "other_files": 1, "images": 5}
    assert set(read_source(root, reader="folder", source="mine").manifest["source"]) == {"mine"}


def test_folder_reader_groups_kermany_style_names_by_person(tmp_path: Path):
    for name in ("person7_virus_1.jpeg", "person7_virus_2.jpeg", "person8_bacteria_3.jpeg"):
        png(tmp_path / "Viral" / name)
    assert sorted(read_source(tmp_path).manifest["patient_id"]) == ["person7", "person7", "person8"]


# ---------------------------------------------------------------- radiography


def make_v1(root: Path) -> None:
    """v1 layout: names in the sheets differ from the files ('COVID-19(1)' vs 'COVID-19 (1).png')."""
    for i in (1, 2, 3, 4):
        png(root / "COVID-19" / f"COVID-19 ({i}).png")
    for i in (1, 2):
        png(root / "NORMAL" / f"NORMAL ({i}).png")
        png(root / "Viral Pneumonia" / f"Viral Pneumonia ({i}).png")
    sheet(root / "COVID-19.metadata.xlsx", ["COVID-19(1)", "COVID-19(2)", "COVID-19(3)", "COVID-19(9)"])
    sheet(root / "NORMAL.metadata.xlsx", ["NORMAL-1", "NORMAL-2"])
    sheet(root / "Viral Pneumonia.metadata.xlsx", ["Viral Pneumonia-1", "Viral Pneumonia-2"])


def test_radiography_v1_matches_misspelled_sheet_names(tmp_path: Path):
    make_v1(tmp_path)
    assert detect_reader(tmp_path) == "radiography"
    result = read_source(tmp_path)
    labels = result.manifest["label"].value_counts().to_dict()
    assert labels == {"COVID-19": 4, "NORMAL": 2, "Viral Pneumonia": 2}
    problems = {(Path(p.path.split(": ")[-1]).name, p.reason) for p in result.problems}
    assert problems == {
        ("COVID-19 (4).png", "image has no row in its metadata sheet"),
        ("COVID-19(9)", "sheet row has no image"),
    }
    assert result.counts == {
        "sheet_rows": 8,
        "rows_without_image": 1,
        "images_without_row": 1,
        "images": 8,
    }


def test_radiography_v4_with_images_masks_and_url_sources(tmp_path: Path):
    classes = ["COVID", "Normal", "Viral Pneumonia", "Lung_Opacity"]
    for cls in classes:
        for i in (1, 2):
            png(tmp_path / cls / "images" / f"{cls}-{i}.png")
            png(tmp_path / cls / "masks" / f"{cls}-{i}.png")
    sheet(tmp_path / "COVID.metadata.xlsx", ["COVID-1", "COVID-2"], ["https://a.org/x", "https://b.org/y"])
    sheet(tmp_path / "Normal.metadata.xlsx", ["NORMAL-1", "NORMAL-2"], ["https://c.org", "https://c.org"])
    sheet(tmp_path / "Pneumonia.metadata.xlsx", ["P-1"], ["https://d.org"])

    result = read_source(tmp_path, source="rdb")
    m = result.manifest
    assert m["label"].value_counts().to_dict() == dict.fromkeys(classes, 2)
    assert not m["path"].str.contains("masks").any()
    by_name = dict(zip(m["path"].map(lambda p: Path(p).name), m["source"], strict=True))
    assert by_name["COVID-1.png"] == "https://a.org/x" and by_name["COVID-2.png"] == "https://b.org/y"
    assert by_name["Normal-1.png"] == "https://c.org"
    assert by_name["Lung_Opacity-1.png"] == "rdb"  # no sheet for this class
    assert problems_of(result) == {"Pneumonia.metadata.xlsx": "metadata sheet has no class folder"}


def test_radiography_without_sheets_equals_the_folder_reader(tmp_path: Path):
    for cls in ("COVID", "Normal", "Viral Pneumonia"):
        png(tmp_path / cls / f"{cls}-1.png")
    result = read_source(tmp_path)
    assert detect_reader(tmp_path) == "radiography" and not result.problems
    pd.testing.assert_frame_equal(result.manifest, read_source(tmp_path, reader="folder").manifest)


@pytest.mark.parametrize(
    ("sheet_name", "file_name"),
    [
        ("COVID-19(1)", "COVID-19 (1).png"),
        ("NORMAL-12", "NORMAL (12).png"),
        ("Viral Pneumonia-3", "Viral Pneumonia (3).png"),
        ("COVID-1", "COVID-1.png"),
        ("covid-007", "COVID (7).PNG"),
    ],
)
def test_name_key_repairs_radiography_spellings(sheet_name: str, file_name: str):
    assert name_key(sheet_name) == name_key(file_name)
    assert name_key("COVID-19 (1).png") != name_key("COVID-19 (11).png")


# ---------------------------------------------------------------- ieee8023


def test_ieee8023_with_filename_column_views_and_label_map(tmp_path: Path):
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "orphan.jpg"):
        png(tmp_path / "images" / name)
    pd.DataFrame(
        {
            "patientid": ["1", "1", "2", "3", "4", "5"],
            "finding": ["COVID-19", "Pneumonia/Viral", "", "No Finding", "COVID-19", "COVID-19"],
            "view": ["PA", "AP Supine", "PA", "L", "PA", "PA"],
            "filename": ["a.jpg", "b.png", "c.jpg", "d.jpg", "gone.jpg", ""],
        }
    ).to_csv(tmp_path / "metadata.csv", index=False)

    assert detect_reader(tmp_path) == "ieee8023"
    label_map = {"No Finding": "Normal", "Pneumonia/Viral": "viral"}
    result = read_source(tmp_path, views=["PA", "AP"], label_map=label_map)
    m = result.manifest
    assert dict(zip(m["path"].map(lambda p: Path(p).name), m["label"], strict=True)) == {
        "a.jpg": "COVID-19",
        "b.png": "viral",
    }
    assert m["view"].tolist() == ["PA", "AP Supine"] and m["patient_id"].tolist() == ["1", "1"]
    assert result.counts == {
        "rows_total": 6,
        "images_found": 4,
        "labeled": 5,
        "unlabeled": 1,
        "label_excluded": 0,
        "view_excluded": 1,
        "patients": 5,
        "images": 2,
    }
    assert problems_of(result) == {
        "gone.jpg": "metadata row's image file is missing",
        "images": "metadata row's image file is missing",
        "orphan.jpg": "image has no row in metadata.csv",
    }
    dropped = read_source(tmp_path, reader="ieee8023", label_map={"Pneumonia/Viral": None})
    assert dropped.counts["label_excluded"] == 1 and len(dropped.manifest) == 2


def test_ieee8023_cp1252_without_image_column_groups_lettered_ids(tmp_path: Path):
    png(tmp_path / "images" / "X-001a.JPG")
    png(tmp_path / "images" / "X-001b.png")
    png(tmp_path / "images" / "X-002.jpeg")
    text = (
        "patientid,finding,view,notes\n"
        "X-001a,COVID-19,PA,39°C\nX-001b,COVID-19,,\nX-002,,AP,\nX-003,Pneumonia,,\n"
    )
    (tmp_path / "metadata.csv").write_bytes(text.encode("cp1252"))

    result = read_source(tmp_path)
    m = result.manifest
    assert m["patient_id"].tolist() == ["X-001", "X-001"]
    assert m["label"].tolist() == ["COVID-19", "COVID-19"]
    assert result.counts["patients"] == 3 and result.counts["images_found"] == 3
    assert problems_of(result) == {"X-003": "no image images/<patientid>.jpg|jpeg|png"}


def test_ieee8023_acceptance_on_figure1(shared_data: Path):
    result = read_source(shared_data / "figure1")
    c = result.counts
    assert (c["rows_total"], c["images_found"], c["labeled"], c["patients"]) == (55, 55, 40, 48)
    labels = result.manifest["label"].value_counts().to_dict()
    assert labels == {"COVID-19": 35, "No finding": 3, "Pneumonia": 2}
    assert c["unlabeled"] == 15 and not result.problems
    assert (result.manifest["width"] > 0).all()


# ---------------------------------------------------------------- kermany


def test_kermany_splits_patients_and_pneumonia_types(tmp_path: Path):
    png(tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    png(tmp_path / "train" / "NORMAL" / "NORMAL2-IM-0002-0001.jpeg")
    png(tmp_path / "train" / "PNEUMONIA" / "person1_virus_1.jpeg")
    png(tmp_path / "train" / "PNEUMONIA" / "person1_bacteria_2.jpeg")
    png(tmp_path / "val" / "normal" / "IM-0003-0001.jpeg")
    png(tmp_path / "Test" / "pneumonia" / "person2_bacteria_3.jpeg")
    png(tmp_path / "Test" / "pneumonia" / "odd.jpeg")
    assert detect_reader(tmp_path) == "kermany"

    plain = read_source(tmp_path)
    assert plain.manifest.groupby(["split", "label"]).size().to_dict() == {
        ("test", "pneumonia"): 2,
        ("train", "NORMAL"): 2,
        ("train", "PNEUMONIA"): 2,
        ("val", "normal"): 1,
    }
    assert not plain.problems
    typed = read_source(tmp_path, pneumonia_types=True)
    names = typed.manifest["path"].map(lambda p: Path(p).name)
    labels = dict(zip(names, typed.manifest["label"], strict=True))
    assert labels["person1_virus_1.jpeg"] == "viral" and labels["person2_bacteria_3.jpeg"] == "bacterial"
    assert labels["odd.jpeg"] == "pneumonia"
    assert list(problems_of(typed)) == ["odd.jpeg"] and typed.counts["untyped_pneumonia"] == 1
    patients = typed.manifest["patient_id"].tolist()
    assert patients.count("person1") == 2 and len(set(patients)) == 6


def test_kermany_acceptance_with_pneumonia_types(shared_data: Path):
    m = read_source(shared_data / "kermany-224", pneumonia_types=True).manifest
    counts = m.groupby(["label", "split"]).size().to_dict()
    assert counts == {
        ("NORMAL", "train"): 300,
        ("NORMAL", "test"): 60,
        ("viral", "train"): 150,
        ("viral", "test"): 24,
        ("bacterial", "train"): 150,
        ("bacterial", "test"): 36,
    }


def test_radiography_acceptance_on_shared_copy(shared_data: Path):
    result = read_source(shared_data / "radiography-224")
    labels = result.manifest["label"].value_counts().to_dict()
    assert labels == {"COVID": 300, "Normal": 300, "Viral Pneumonia": 300}
    assert not result.problems and (result.manifest["width"] == 224).all()


# ---------------------------------------------------------------- csv


def test_csv_manifest_keeps_extras_resolves_paths_and_reports_missing(tmp_path: Path):
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png")
    png(tmp_path / "masks" / "a_lung.png")
    elsewhere = png(tmp_path.parent / f"{tmp_path.name}_abs" / "c.png")
    pd.DataFrame(
        {
            "path": ["img/a.png", "img/b.png", str(elsewhere), "img/gone.png", "img/a.png"],
            "label": ["COVID", "normal", "normal", "COVID", ""],
            "patient_id": ["p1", "p1", "", "p3", "p1"],
            "split": ["train", "test", "", "", ""],
            "lung_mask": ["masks/a_lung.png", "masks/none.png", "", "", ""],
            "note": ["x", "", "", "", ""],
        }
    ).to_csv(tmp_path / "manifest.csv", index=False)

    assert detect_reader(tmp_path) == "csv" and detect_reader(tmp_path / "manifest.csv") == "csv"
    result = read_source(tmp_path)
    m = result.manifest.set_index(result.manifest["path"].map(lambda p: Path(p).name))
    assert list(result.manifest.columns) == [*COLUMNS, "split", "lung_mask", "note"]
    assert m.loc["a.png", "path"] == str(tmp_path / "img" / "a.png")
    assert m.loc["c.png", "path"] == str(elsewhere) and m.loc["c.png", "patient_id"] == "c"
    assert m.loc["a.png", "lung_mask"] == str(tmp_path / "masks" / "a_lung.png")
    assert m.loc["a.png", "note"] == "x" and m.loc["b.png", "split"] == "test"
    assert problems_of(result) == {
        "gone.png": "file named in manifest.csv line 5 not found",
        "none.png": f"lung_mask of {tmp_path / 'img' / 'b.png'} not found",
    }
    assert result.counts == {"rows_total": 5, "unlabeled": 1, "missing_files": 1, "images": 3}


def test_csv_manifest_round_trips_a_saved_manifest(tmp_path: Path):
    png(tmp_path / "x" / "cls" / "a.png", (33, 44))
    first = read_source(tmp_path / "x", reader="folder")
    first.manifest.to_csv(tmp_path / "saved.csv", index=False)
    again = read_source(tmp_path / "saved.csv").manifest
    pd.testing.assert_frame_equal(again, first.manifest)


def test_csv_without_required_columns_is_a_data_error(tmp_path: Path):
    (tmp_path / "m.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="missing column.*path, label"):
        read_source(tmp_path / "m.csv")


def test_csv_reader_reads_the_synthetic_generator_output(tmp_path: Path):
    from covid_cxr.data.synthetic import synthesize

    written = synthesize(tmp_path, 8, size=32, seed=1)
    assert detect_reader(tmp_path) == "csv"
    result = read_source(tmp_path)
    expected = written.sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(result.manifest[list(written.columns)], expected)
    assert not result.problems


# ---------------------------------------------------------------- read_source


def test_missing_source_and_empty_folder_are_data_errors(tmp_path: Path):
    with pytest.raises(DataError, match="nowhere"):
        read_source(tmp_path / "nowhere")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable images"):
        read_source(tmp_path / "empty")


def test_unknown_reader_or_option_names_the_valid_ones(tmp_path: Path):
    png(tmp_path / "a" / "x.png")
    with pytest.raises(ConfigError, match="folder, radiography, ieee8023, kermany, csv"):
        read_source(tmp_path, reader="nope")
    with pytest.raises(ConfigError, match="no option views; its options: source"):
        read_source(tmp_path, reader="folder", views=["PA"])
    assert reader_options("ieee8023") == ["label_map", "views", "source"]
    assert set(READERS) == {"folder", "radiography", "ieee8023", "kermany", "csv"}
