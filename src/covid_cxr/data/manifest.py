"""The Manifest: one DataFrame schema that every reader produces and every stage consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

COLUMNS = ["path", "label", "patient_id", "source", "view", "width", "height", "sha256"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}


@dataclass
class Problem:
    """A file or metadata row that could not be used, and why."""

    path: str
    reason: str


@dataclass
class ReadResult:
    """What a reader returns: the manifest plus everything it could not use."""

    manifest: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def is_image_file(path: Path) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, or (0, 0) when the header cannot be read."""
    p = Path(path)
    if p.suffix.lower() == ".dcm":
        from covid_cxr.data.dicom import dicom_size

        return dicom_size(p)
    try:
        with Image.open(p) as im:
            return im.size
    except Exception:  # noqa: BLE001 - unreadable files are reported by the checks, not here
        return (0, 0)


def make_manifest(rows: list[dict], source: str) -> pd.DataFrame:
    """Build a Manifest from rows holding at least path and label; fills the other columns."""
    records = []
    for row in rows:
        path = str(row["path"])
        width, height = image_size(path) if "width" not in row else (row["width"], row["height"])
        records.append(
            {
                "path": path,
                "label": row.get("label"),
                "patient_id": row.get("patient_id") or Path(path).stem,
                "source": row.get("source") or source,
                "view": row.get("view") or "",
                "width": int(width),
                "height": int(height),
                "sha256": row.get("sha256") or sha256_file(path),
                **({"split": row["split"]} if row.get("split") else {}),
            }
        )
    frame = pd.DataFrame.from_records(
        records, columns=COLUMNS + (["split"] if any("split" in r for r in records) else [])
    )
    frame["width"] = frame["width"].astype(int)
    frame["height"] = frame["height"].astype(int)
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def save_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest CSV atomically."""
    from covid_cxr.io import atomic_write_text

    atomic_write_text(path, frame.to_csv(index=False))


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV written by save_manifest."""
    frame = pd.read_csv(path, dtype={"patient_id": str, "label": str, "view": str, "source": str})
    frame["view"] = frame["view"].fillna("")
    return frame
