"""Readers for plain folder layouts: one folder per class, and Kermany's train/val/test tree."""

from __future__ import annotations

import re
from pathlib import Path

from covid_cxr.data.manifest import Problem, ReadResult
from covid_cxr.data.readers_common import (
    child_dir,
    class_dirs,
    finish,
    image_row,
    is_candidate,
    iter_images,
    loose_images,
    require_dir,
    walk_files,
)

KERMANY_SPLITS = ("train", "val", "test")
KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
_PNEUMONIA_TYPE = re.compile(r"_(virus|bacteria)_", re.IGNORECASE)
_TYPE_LABELS = {"virus": "viral", "bacteria": "bacterial"}
UNTYPED = "pneumonia type (_virus_ or _bacteria_) not in the file name; labeled by its folder"


def read_folder(root: str | Path, *, source: str | None = None) -> ReadResult:
    """One sub-folder per class (any depth below it); DICOM files take their PatientID."""
    root = require_dir(root)
    rows = [image_row(p, folder.name) for folder in class_dirs(root) for p in iter_images(folder)]
    problems = loose_images(root)
    counts = {"unlabeled": len(problems), "other_files": sum(not is_candidate(p) for p in walk_files(root))}
    return finish(root, rows, problems, counts, source or root.name)


def read_kermany(root: str | Path, *, pneumonia_types: bool = False, source: str | None = None) -> ReadResult:
    """Kermany layout train|val|test/NORMAL|PNEUMONIA: the folder gives the split, the name the patient.

    With pneumonia_types, PNEUMONIA becomes 'viral' or 'bacterial' from '_virus_'/'_bacteria_'.
    """
    root = require_dir(root)
    rows: list[dict] = []
    problems: list[Problem] = []
    for split in KERMANY_SPLITS:
        split_dir = child_dir(root, split)
        for folder in class_dirs(split_dir) if split_dir else []:
            for path in iter_images(folder):
                label = _kermany_label(path, folder.name, pneumonia_types)
                rows.append(image_row(path, label, split=split))
                if pneumonia_types and label.upper() == "PNEUMONIA":
                    problems.append(Problem(str(path), UNTYPED))
        problems += loose_images(split_dir) if split_dir else []
    counts = {"untyped_pneumonia": sum(p.reason == UNTYPED for p in problems)}
    counts["unlabeled"] = len(problems) - counts["untyped_pneumonia"]
    return finish(root, rows, problems, counts, source or root.name)


def is_kermany(root: Path) -> bool:
    """True when root has a train/val/test folder holding NORMAL or PNEUMONIA (any case)."""
    return any(
        child_dir(split_dir, name) is not None
        for split in KERMANY_SPLITS
        if (split_dir := child_dir(root, split)) is not None
        for name in KERMANY_CLASSES
    )


def _kermany_label(path: Path, folder: str, pneumonia_types: bool) -> str:
    """The class folder name, or viral/bacterial for a typed PNEUMONIA file when asked for."""
    match = _PNEUMONIA_TYPE.search(path.name)
    if pneumonia_types and folder.upper() == "PNEUMONIA" and match:
        return _TYPE_LABELS[match.group(1).lower()]
    return folder
