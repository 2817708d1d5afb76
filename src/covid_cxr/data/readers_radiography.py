"""Reader for the COVID-19 Radiography Database (Kaggle), v1 and v4 layouts, with or without sheets.

v1: COVID-19/, NORMAL/, Viral Pneumonia/ holding 'COVID-19 (N).png'; sheets '<class>.metadata.xlsx'
whose FILE NAME values are spelled differently ('COVID-19(N)', 'NORMAL-N'): matched by name_key.
v4: COVID/, Normal/, Viral Pneumonia/, Lung_Opacity/, optionally with images/ and masks/ inside;
sheets with FILE NAME ('COVID-1'), FORMAT, SIZE, URL; the URL becomes the image's source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from covid_cxr.data.manifest import Problem, ReadResult
from covid_cxr.data.readers_common import (
    cell,
    class_dirs,
    column,
    finish,
    image_row,
    iter_images,
    loose_images,
    name_key,
    require_dir,
)
from covid_cxr.errors import DataError

SHEET_SUFFIX = ".metadata.xlsx"
V1_CLASSES = {"covid-19", "normal", "viral pneumonia"}
V4_CLASSES = {"covid", "normal", "viral pneumonia"}  # plus lung_opacity in the full v4 release
NO_IMAGE = "sheet row has no image"
NO_ROW = "image has no row in its metadata sheet"
REPEATED = "file name repeated in the sheet"


@dataclass
class _Sheet:
    """One class's metadata sheet: FILE NAME key -> (FILE NAME, URL), and repeated names."""

    path: Path
    entries: dict[str, tuple[str, str]] = field(default_factory=dict)
    repeated: list[str] = field(default_factory=list)


def read_radiography(root: str | Path, *, source: str | None = None) -> ReadResult:
    """Class folders matched with their metadata sheets; unmatched rows and images become problems."""
    root = require_dir(root)
    sheets = {name_key(p.name[: -len(SHEET_SUFFIX)]): _read_sheet(p) for p in _sheet_paths(root)}
    counts = {"sheet_rows": sum(len(s.entries) + len(s.repeated) for s in sheets.values())}
    rows: list[dict] = []
    problems: list[Problem] = []
    for folder in class_dirs(root):
        sheet = sheets.pop(name_key(folder.name), None)
        images = list(iter_images(folder))
        if sheet is None:
            rows += [image_row(p, folder.name) for p in images]
        else:
            rows += _match_sheet(folder.name, images, sheet, problems)
    problems += [Problem(str(s.path), "metadata sheet has no class folder") for s in sheets.values()]
    problems += loose_images(root)
    counts["rows_without_image"] = sum(p.reason == NO_IMAGE for p in problems)
    counts["images_without_row"] = sum(p.reason == NO_ROW for p in problems)
    return finish(root, rows, problems, counts, source or root.name)


def is_radiography(root: Path) -> bool:
    """True for the Radiography Database's class folder names or its *.metadata.xlsx sheets."""
    names = {p.name.lower() for p in class_dirs(root)}
    return bool(_sheet_paths(root)) or V1_CLASSES <= names or V4_CLASSES <= names


def _sheet_paths(root: Path) -> list[Path]:
    """The '<class>.metadata.xlsx' files at the root (Excel lock files excluded)."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file() and p.name.lower().endswith(SHEET_SUFFIX) and not p.name.startswith(("~$", "."))
    )


def _read_sheet(path: Path) -> _Sheet:
    """Read a metadata sheet's FILE NAME and URL columns; rows without a file name are ignored."""
    try:
        frame = pd.read_excel(path, dtype=str)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a broken workbook
        raise DataError(f"{path}: cannot read metadata sheet ({type(exc).__name__}: {exc})") from None
    name_col = column(frame, "FILE NAME", "FILENAME", "FILE_NAME")
    if name_col is None:
        raise DataError(f"{path}: metadata sheet has no 'FILE NAME' column")
    url_col = column(frame, "URL")
    sheet = _Sheet(path)
    for record in frame.to_dict("records"):
        name = cell(record[name_col])
        if name and name_key(name) in sheet.entries:
            sheet.repeated.append(name)
        elif name:
            sheet.entries[name_key(name)] = (name, cell(record[url_col]) if url_col else "")
    return sheet


def _match_sheet(label: str, images: list[Path], sheet: _Sheet, problems: list[Problem]) -> list[dict]:
    """Manifest rows for one class folder; appends the problems of matching it with its sheet."""
    remaining = dict(sheet.entries)
    rows = []
    for path in images:
        entry = remaining.pop(name_key(path.name), None)
        if entry is None:
            problems.append(Problem(str(path), NO_ROW))
        rows.append(image_row(path, label, source=entry[1] if entry else ""))
    problems += [Problem(f"{sheet.path}: {name}", NO_IMAGE) for name, _ in remaining.values()]
    problems += [Problem(f"{sheet.path}: {name}", REPEATED) for name in sheet.repeated]
    return rows
