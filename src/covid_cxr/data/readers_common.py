"""Helpers shared by the dataset readers: folder walking, name matching, table reading, results."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator
from pathlib import Path

import pandas as pd

from covid_cxr.data.dicom import dicom_patient_id
from covid_cxr.data.manifest import IMAGE_EXTENSIONS, Problem, ReadResult, make_manifest
from covid_cxr.errors import DataError

SKIPPED_DIRS = {"masks"}
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z]+|\d+")


def require_dir(root: str | Path) -> Path:
    """The source folder as an absolute Path; DataError naming it when missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    if not path.is_dir():
        raise DataError(f"data source is not a folder: {path}")
    return path.resolve()


def is_hidden(path: Path) -> bool:
    """True for dot-files and dot-folders."""
    return path.name.startswith(".")


def is_candidate(path: Path) -> bool:
    """True for a visible file with a supported image extension (any case)."""
    return not is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def walk_files(root: Path) -> Iterator[Path]:
    """Every visible file under root, sorted, skipping hidden folders and folders named masks."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in SKIPPED_DIRS)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def iter_images(root: Path) -> Iterator[Path]:
    """Candidate image files under root (any depth), sorted."""
    return (p for p in walk_files(root) if is_candidate(p))


def class_dirs(root: Path) -> list[Path]:
    """Visible sub-folders of root that are not mask folders, sorted by name."""
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not is_hidden(p) and p.name.lower() not in SKIPPED_DIRS
    )


def child_dir(root: Path, name: str) -> Path | None:
    """The sub-folder of root whose name equals name ignoring case, if any."""
    return next((p for p in class_dirs(root) if p.name.lower() == name.lower()), None)


def loose_images(root: Path) -> list[Problem]:
    """Images lying directly in root, outside any class folder, as problems (they have no label)."""
    loose = sorted(p for p in root.iterdir() if is_candidate(p))
    return [Problem(str(p), "image is not inside a class folder; left out") for p in loose]


def name_key(name: str) -> str:
    """A key for matching file names that ignores image extension, case, punctuation and zero padding.

    'COVID-19(1)', 'COVID-19 (1).png' and 'covid 19 (001).PNG' all give 'covid_19_1'.
    """
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
    return "_".join(str(int(t)) if t.isdigit() else t for t in _TOKEN.findall(stem.lower()))


def patient_from_name(path: Path) -> str | None:
    """Patient id for a file: the DICOM PatientID, or 'personN' from a Kermany-style name, else None."""
    if path.suffix.lower() == ".dcm":
        return dicom_patient_id(path)
    match = _PERSON.match(path.name)
    return match.group(1).lower() if match else None


def image_row(path: Path, label: str, **extra: object) -> dict:
    """A manifest row for an image file, with the patient id derived from the file."""
    return {"path": str(path), "label": label, "patient_id": patient_from_name(path), **extra}


def read_table(path: Path, text_columns: Collection[str] | None = None) -> pd.DataFrame:
    """Read a CSV, only empty cells missing: UTF-8, else Windows-1252, else Latin-1.

    Every column is read as text, or only text_columns when given (the others' types inferred).
    """
    dtype = str if text_columns is None else dict.fromkeys(text_columns, str)
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""], encoding=encoding)
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{path}: not a readable CSV ({exc})") from None
    raise DataError(f"{path}: unknown text encoding")  # unreachable: Latin-1 decodes any bytes


def column(frame: pd.DataFrame, *names: str) -> str | None:
    """The frame's column matching one of names (case and surrounding spaces ignored), if any."""
    lookup = {str(c).strip().lower(): c for c in frame.columns}
    return next((lookup[n.lower()] for n in names if n.lower() in lookup), None)


def cell(value: object) -> str:
    """A table cell as a stripped string; missing values become ''."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def finish(
    root: Path, rows: list[dict], problems: list[Problem], counts: dict[str, int], source: str
) -> ReadResult:
    """Build the ReadResult; DataError when not one usable image was found."""
    if not rows:
        hint = f" (first problem: {problems[0].path}: {problems[0].reason})" if problems else ""
        raise DataError(f"no usable images found in {root}{hint}")
    counts = {**counts, "images": len(rows)}
    return ReadResult(make_manifest(rows, source), problems, counts)
