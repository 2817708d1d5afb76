"""Reader for ieee8023 covid-chestxray-dataset style metadata.csv (also the Figure 1 dataset).

The image column is 'filename' or 'imagename' (files in images/, or in the row's 'folder'); without
one the image is images/<patientid>.<jpg|jpeg|png>. Rows with an empty finding are unlabeled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from covid_cxr.data.manifest import Problem, ReadResult
from covid_cxr.data.readers_common import cell, column, finish, is_candidate, read_table, require_dir
from covid_cxr.errors import ConfigError, DataError

METADATA = "metadata.csv"
PATIENT_EXTENSIONS = (".jpg", ".jpeg", ".png")
NO_PATIENT_IMAGE = "no image images/<patientid>.jpg|jpeg|png"
_IMAGE_SUFFIX = re.compile(r"^(.*\d)[a-z]$")


def read_ieee8023(
    root: str | Path,
    *,
    label_map: Mapping[str, str | None] | None = None,
    views: Iterable[str] | str | None = None,
    source: str | None = None,
) -> ReadResult:
    """metadata.csv rows -> manifest; label_map renames findings (None drops them), views filters."""
    csv_path = Path(root).resolve() if Path(root).suffix.lower() == ".csv" else require_dir(root) / METADATA
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: metadata file not found")
    frame = read_table(csv_path)
    cols = _columns(frame, csv_path)
    folder = csv_path.parent
    locate = _locator(cols, folder)
    wanted_views = _view_set(views)
    rows, problems, used = [], [], set()
    counts = dict.fromkeys(
        ["rows_total", "images_found", "labeled", "unlabeled", "label_excluded", "view_excluded"], 0
    )
    for record in frame.to_dict("records"):
        counts["rows_total"] += 1
        path, problem = locate(record)
        if problem:
            problems.append(problem)
        else:
            counts["images_found"] += 1
            used.add(path)
        row = _row(record, cols, path, label_map or {}, wanted_views, counts)
        if row and path:
            rows.append(row)
    problems += _unreferenced(folder / "images", used, csv_path.name)
    counts["patients"] = _patient_count(frame, cols["patient"])
    return finish(folder, rows, problems, counts, source or folder.name)


def group_patient(patient_id: str) -> str:
    """'COVID-00003a' -> 'COVID-00003': a letter after the number marks one of a patient's images."""
    match = _IMAGE_SUFFIX.match(patient_id)
    return match.group(1) if match else patient_id


def _columns(frame: pd.DataFrame, csv_path: Path) -> dict[str, str | None]:
    """The columns this reader uses; DataError when finding or patientid is missing."""
    cols = {
        "finding": column(frame, "finding"),
        "patient": column(frame, "patientid", "patient_id"),
        "image": column(frame, "filename", "imagename"),
        "folder": column(frame, "folder"),
        "view": column(frame, "view"),
    }
    for key, name in (("finding", "finding"), ("patient", "patientid")):
        if cols[key] is None:
            raise DataError(f"{csv_path}: no '{name}' column (found: {', '.join(map(str, frame.columns))})")
    if cols["image"] is None:
        cols["folder"] = None
    return cols


def _locator(cols: dict, folder: Path):
    """A function record -> (image path, None) or (None, Problem) for this file's layout."""
    by_stem: dict[str, list[Path]] = {}
    images_dir = folder / "images"
    for path in sorted(images_dir.iterdir()) if images_dir.is_dir() else []:
        if is_candidate(path) and path.suffix.lower() in PATIENT_EXTENSIONS:
            by_stem.setdefault(path.stem.lower(), []).append(path)

    def locate(record: dict) -> tuple[Path | None, Problem | None]:
        if cols["image"] is not None:
            name = cell(record[cols["image"]])
            sub = cell(record[cols["folder"]]) if cols["folder"] else "images"
            path = folder / (sub or "images") / name
            ok = bool(name) and path.is_file()
            return (path, None) if ok else (None, Problem(str(path), "metadata row's image file is missing"))
        patient = cell(record[cols["patient"]])
        found = by_stem.get(patient.lower(), []) if patient else []
        if len(found) == 1:
            return found[0], None
        reason = "several images match the patient id" if found else NO_PATIENT_IMAGE
        return None, Problem(str(images_dir / (patient or "<empty patientid>")), reason)

    return locate


def _row(
    record: dict, cols: dict, path: Path | None, label_map: Mapping, views: set[str] | None, counts: dict
) -> dict | None:
    """The manifest row for a record, or None when unlabeled or filtered out (counted)."""
    finding = cell(record[cols["finding"]])
    if not finding:
        counts["unlabeled"] += 1
        return None
    counts["labeled"] += 1
    label = label_map.get(finding, finding)
    view = cell(record[cols["view"]]) if cols["view"] else ""
    if not label:
        counts["label_excluded"] += 1
        return None
    if views is not None and not ({view.upper(), view.upper().split(" ")[0]} & views):
        counts["view_excluded"] += 1
        return None
    patient = cell(record[cols["patient"]])
    return {"path": str(path), "label": label, "patient_id": group_patient(patient) or None, "view": view}


def _view_set(views: Iterable[str] | str | None) -> set[str] | None:
    """Wanted views upper-cased; a view matches by its full value or its first word ('AP erect')."""
    if views is None:
        return None
    if isinstance(views, str):
        views = views.split(",")
    wanted = {str(v).strip().upper() for v in views if str(v).strip()}
    if not wanted:
        raise ConfigError("views is empty; leave it out to keep every view")
    return wanted


def _unreferenced(images_dir: Path, used: set[Path], csv_name: str) -> list[Problem]:
    """Images in images/ that no metadata row points to."""
    files = sorted(p for p in images_dir.iterdir() if is_candidate(p)) if images_dir.is_dir() else []
    return [Problem(str(p), f"image has no row in {csv_name}") for p in files if p not in used]


def _patient_count(frame: pd.DataFrame, patient_col: str) -> int:
    """Distinct patients over all rows, letter-suffixed ids grouped."""
    ids = (cell(v) for v in frame[patient_col])
    return len({group_patient(i) for i in ids if i})
