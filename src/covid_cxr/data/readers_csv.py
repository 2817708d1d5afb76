"""Reader for a CSV manifest: path,label[,patient_id,source,view,split,...] plus any extra columns.

Paths are relative to the CSV's folder or absolute. Extra columns are kept with their types inferred;
those whose name ends in 'path', 'mask' or 'file' (lung_mask, lesion_mask, ...) hold paths and are
resolved the same way.
"""

from __future__ import annotations

from pathlib import Path

from covid_cxr.data.manifest import COLUMNS, Problem, ReadResult
from covid_cxr.data.readers_common import cell, finish, read_table, require_dir
from covid_cxr.errors import DataError

MANIFEST_NAME = "manifest.csv"
PATH_COLUMN_ENDINGS = ("path", "mask", "file")
_KNOWN = [*COLUMNS, "split"]


def read_csv_manifest(root: str | Path, *, source: str | None = None) -> ReadResult:
    """Rows with an existing file and a label -> manifest; missing files are problems."""
    csv_path = _csv_path(root)
    frame = read_table(csv_path, text_columns=_KNOWN)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        found = ", ".join(frame.columns)
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} (found: {found})")
    folder = csv_path.parent
    extras = [c for c in frame.columns if c not in _KNOWN]
    rows: list[dict] = []
    problems: list[Problem] = []
    counts = {"rows_total": len(frame), "unlabeled": 0, "missing_files": 0}
    for line, record in enumerate(frame.to_dict("records"), start=2):
        row = {k: cell(record[k]) for k in _KNOWN if k in record and cell(record[k])}
        if "path" not in row:
            problems.append(Problem(f"{csv_path}:{line}", "row has no path"))
            continue
        row["path"] = _resolve(folder, row["path"])
        if not Path(row["path"]).is_file():
            counts["missing_files"] += 1
            problems.append(Problem(row["path"], f"file named in {csv_path.name} line {line} not found"))
        elif "label" not in row:
            counts["unlabeled"] += 1
        else:
            row.update(_extras(record, extras, folder, row["path"], problems))
            rows.append(_typed(row))
    rows.sort(key=lambda r: r["path"])  # make_manifest's order, so extras line up
    result = finish(folder, rows, problems, counts, source or folder.name)
    for col in extras:
        result.manifest[col] = [row[col] for row in rows]
    assert result.manifest["path"].tolist() == [row["path"] for row in rows]
    return result


def has_manifest(root: Path) -> bool:
    """True when root is a folder holding a manifest.csv."""
    return (root / MANIFEST_NAME).is_file()


def _csv_path(root: str | Path) -> Path:
    """The CSV file itself, or the manifest.csv inside a folder."""
    path = Path(root).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DataError(f"data source not found: {path}")
        return path.resolve()
    csv_path = require_dir(path) / MANIFEST_NAME
    if not csv_path.is_file():
        raise DataError(f"{path}: no {MANIFEST_NAME} in this folder")
    return csv_path


def _resolve(folder: Path, value: str) -> str:
    """An absolute path for a path cell relative to the CSV's folder."""
    path = Path(value).expanduser()
    return str((path if path.is_absolute() else folder / path).resolve())


def _extras(record: dict, extras: list[str], folder: Path, image: str, problems: list[Problem]) -> dict:
    """The row's extra cells, path cells resolved; problems for path cells naming no file."""
    values = {col: record[col] for col in extras}
    for col in extras:
        if col.lower().endswith(PATH_COLUMN_ENDINGS) and cell(values[col]):
            values[col] = _resolve(folder, cell(values[col]))
            if not Path(values[col]).exists():
                problems.append(Problem(values[col], f"{col} of {image} not found"))
    return values


def _typed(row: dict) -> dict:
    """Width and height as ints, kept only when both are given (else read from the header)."""
    if "width" in row and "height" in row:
        try:
            row["width"], row["height"] = int(float(row["width"])), int(float(row["height"]))
            return row
        except ValueError:
            pass
    row.pop("width", None)
    row.pop("height", None)
    return row
