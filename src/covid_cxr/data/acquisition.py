"""Acquisition-cue check: do file format, colour mode, bit depth, size or file-name pattern predict the label?

When the classes of a dataset were gathered differently (COVID-19 Radiography Database: COVID and
Normal are grey PNGs, Viral Pneumonia RGB JPEGs from the paediatric Kermany set), a model can learn
how an image was stored instead of what it shows, even when every image carries the same source
name. This check looks at the files only, before training: a small classifier (a depth-4 decision
tree, :data:`CLASSIFIER`) is cross-validated on the per-file facts alone, and each class's
one-vs-rest ROC AUC says how well they pick that class out. A class above :data:`FLAG_AUC` is
flagged, together with the feature(s) that separate it on their own (per-feature AUC above the
threshold; the two best when only their combination does).

Features (:data:`FEATURES`): ``format`` (the file's real format from its header, PNG, JPEG, DICOM,
not the extension), ``mode`` (PIL colour mode: L, RGB, I;16, ...; for DICOM the photometric
interpretation), ``bit_depth`` (bits per channel), ``size`` (width x height) and ``name_pattern``
(the file stem with digit runs replaced by ``#`` and any token that merely repeats the class or
folder name replaced by ``{class}``, so ``COVID-12.png`` in class COVID and ``Normal-3.png`` in
class Normal both read ``{class}-#`` and do not count as a cue).

``checks.json`` holds the result under ``acquisition`` (absent from files written before it existed)::

    {
      "n_images": 900,                      # readable images the check used
      "classes": ["COVID", "Normal", "Viral Pneumonia"],
      "features": ["format", "mode", "bit_depth", "size", "name_pattern"],
      "distributions": {                    # class -> feature -> value -> image count, most frequent
        "Viral Pneumonia": {                #   first; at most TOP_VALUES values, the rest summed
          "format": {"JPEG": 300},          #   under "(other)"
          "mode": {"RGB": 300}, "bit_depth": {"8": 300}, "size": {"224x224": 300},
          "name_pattern": {"person#_virus_#": 300}}, ...},
      "auc": {"COVID": 0.75, "Normal": 0.75, "Viral Pneumonia": 1.0, "overall": 0.83},
      "feature_auc": {"format": {"COVID": 0.75, ..., "overall": 0.83}, ...},   # each feature alone
      "threshold": 0.8,
      "flagged": [{"label": "Viral Pneumonia", "auc": 1.0, "features": ["format", "mode", ...],
                   "evidence": ["file format JPEG in 100% of Viral Pneumonia, 0% of the others", ...]}],
      "flag": true,
      "verdict": "FLAG: ...",               # plain language; starts with FLAG, OK or SKIP
      "classifier": "decision tree (depth 4), 5-fold stratified cross-validation grouped by patient",
      "skipped": ""                         # why the AUCs are missing (one class, too few images)
    }

AUCs are ``null`` when undefined (a class absent, or the check skipped).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageMode
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

from covid_cxr.data.images import is_dicom

log = logging.getLogger(__name__)

FLAG_AUC = 0.8  # a class that the file facts alone pick out with a higher one-vs-rest AUC is flagged
FEATURES = ("format", "mode", "bit_depth", "size", "name_pattern")
FEATURE_NAMES = {
    "format": "file format",
    "mode": "colour mode",
    "bit_depth": "bit depth",
    "size": "image size",
    "name_pattern": "file-name pattern",
}
TOP_VALUES = 8  # values per class and feature kept in the distributions
MAX_FOLDS = 5
MIN_STABLE = 10  # below this many images in a class the verdict says its AUC is unreliable
CLASSIFIER = "decision tree (depth 4)"


@dataclass
class FileFacts:
    """What the header of one file says: real format, colour mode, bits per channel."""

    format: str
    mode: str
    bit_depth: int


@dataclass
class CueFlag:
    """A class the file facts pick out, and the features that do it."""

    label: str
    auc: float
    features: list[str]
    evidence: list[str]


@dataclass
class AcquisitionCues:
    """Per-class distributions of the file facts and how well they predict the label (see module doc)."""

    n_images: int
    classes: list[str]
    distributions: dict[str, dict[str, dict[str, int]]]
    auc: dict[str, float | None]
    feature_auc: dict[str, dict[str, float | None]]
    flagged: list[CueFlag] = field(default_factory=list)
    flag: bool = False
    verdict: str = ""
    skipped: str = ""
    threshold: float = FLAG_AUC
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    classifier: str = CLASSIFIER


def file_facts(data: bytes, name: str) -> FileFacts:
    """Format, mode and bit depth from the header of a file's bytes (the pixels are not decoded)."""
    if is_dicom(data, name):
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return FileFacts("DICOM", str(ds.get("PhotometricInterpretation", "?")), int(ds.get("BitsStored", 0)))
    with Image.open(io.BytesIO(data)) as im:
        return FileFacts(im.format or "unknown", im.mode, _bit_depth(im.mode))


def _bit_depth(mode: str) -> int:
    """Bits per channel of a PIL mode (1 for bilevel)."""
    if mode == "1":
        return 1
    try:
        return 8 * int(ImageMode.getmode(mode).typestr[-1])
    except (KeyError, ValueError):
        return 0


def name_pattern(path: str, label: str) -> str:
    """The stem with class/folder-name tokens as '{class}' and digit runs as '#'."""
    p = Path(path)
    stem = p.stem
    for name in sorted({label, p.parent.name}, key=len, reverse=True):
        words = re.findall(r"[A-Za-z0-9]+", name)
        if words:
            token = r"(?<![A-Za-z])" + r"[\W_]*".join(map(re.escape, words)) + r"(?![A-Za-z])"
            stem = re.sub(token, "{class}", stem, flags=re.IGNORECASE)
    return re.sub(r"\d+", "#", stem)


def check_acquisition(readable: pd.DataFrame) -> AcquisitionCues:
    """The cue check on readable rows with path, label, patient_id, format, mode, bit_depth, width, height."""
    frame = _features(readable)
    classes = sorted(frame["label"].unique().tolist())
    cues = AcquisitionCues(
        n_images=len(frame),
        classes=classes,
        distributions=_distributions(frame, classes),
        auc=dict.fromkeys([*classes, "overall"]),
        feature_auc={f: dict.fromkeys([*classes, "overall"]) for f in FEATURES},
    )
    folds, cues.skipped = _folds(frame)
    if cues.skipped:
        cues.verdict = f"SKIP: {cues.skipped}"
        return cues
    cues.classifier = f"{CLASSIFIER}, {len(folds)}-fold stratified cross-validation grouped by patient"
    cues.auc = _cv_auc(frame, list(FEATURES), classes, folds)
    cues.feature_auc = {f: _cv_auc(frame, [f], classes, folds) for f in FEATURES}
    cues.flagged = [_flag(frame, cues, c) for c in classes if (cues.auc[c] or 0) > FLAG_AUC]
    cues.flag = bool(cues.flagged)
    cues.verdict = _verdict(cues) + _small_classes(frame)
    log.log(logging.WARNING if cues.flag else logging.INFO, "acquisition cues: %s", cues.verdict)
    return cues


def _features(readable: pd.DataFrame) -> pd.DataFrame:
    """label, group and the feature columns (categoricals as strings, sizes as numbers)."""
    labels = readable["label"].astype(str)
    return pd.DataFrame(
        {
            "label": labels,
            "group": readable["patient_id"].astype(str) if "patient_id" in readable else readable["path"],
            "format": readable["format"].astype(str),
            "mode": readable["mode"].astype(str),
            "bit_depth": readable["bit_depth"].astype(str),
            "width": readable["width"].astype(int),
            "height": readable["height"].astype(int),
            "size": readable["width"].astype(str) + "x" + readable["height"].astype(str),
            "name_pattern": [
                name_pattern(str(p), lab) for p, lab in zip(readable["path"], labels, strict=True)
            ],
        }
    ).reset_index(drop=True)


def _distributions(frame: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """class -> feature -> value -> count, most frequent first, the tail summed under '(other)'."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for label in classes:
        rows = frame[frame["label"] == label]
        out[label] = {}
        for feature in FEATURES:
            counts = rows[feature].value_counts()
            top = {str(k): int(v) for k, v in counts.iloc[:TOP_VALUES].items()}
            if len(counts) > TOP_VALUES:
                top["(other)"] = int(counts.iloc[TOP_VALUES:].sum())
            out[label][feature] = top
    return out


def _folds(frame: pd.DataFrame) -> tuple[list, str]:
    """Patient-grouped CV folds stratified by each patient's most frequent label, or why there are none.

    (scikit-learn's StratifiedGroupKFold does the same with a Python loop per group: 0.6 s on 900.)
    """
    if frame["label"].nunique() < 2:
        return [], "fewer than two classes, nothing to predict"
    pairs = frame.groupby(["group", "label"]).size().reset_index(name="n")
    top = pairs.sort_values(["n", "label"], ascending=[False, True]).drop_duplicates("group")
    per_group = top.set_index("group")["label"].sort_index()
    groups_per_class = per_group.value_counts()
    n_splits = int(min(MAX_FOLDS, groups_per_class.min())) if len(groups_per_class) > 1 else 0
    if n_splits < 2:
        return [], f"class {groups_per_class.idxmin()!r} has too few patients to cross-validate"
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0)
    group_fold = np.empty(len(per_group), dtype=int)
    for fold, (_, test) in enumerate(cv.split(per_group.index, per_group.to_numpy())):
        group_fold[test] = fold
    row_fold = pd.Series(group_fold, index=per_group.index)[frame["group"]].to_numpy()
    return [(np.flatnonzero(row_fold != k), np.flatnonzero(row_fold == k)) for k in range(n_splits)], ""


def _cv_auc(
    frame: pd.DataFrame, features: list[str], classes: list[str], folds: list
) -> dict[str, float | None]:
    """Cross-validated one-vs-rest AUC per class (and their mean, 'overall') of the tree on `features`."""
    x = _design(frame, features)
    y = frame["label"].to_numpy()
    proba = np.zeros((len(frame), len(classes)))
    for train, test in folds:
        tree = DecisionTreeClassifier(max_depth=4, min_samples_leaf=3, random_state=0).fit(x[train], y[train])
        proba[np.ix_(test, np.searchsorted(classes, tree.classes_))] = tree.predict_proba(x[test])
    out: dict[str, float | None] = {}
    for k, label in enumerate(classes):
        positive = y == label
        out[label] = float(roc_auc_score(positive, proba[:, k])) if 0 < positive.sum() < len(y) else None
    defined = [v for v in out.values() if v is not None]
    out["overall"] = float(np.mean(defined)) if defined else None
    return out


def _design(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The tree's input: categorical features one-hot (an unsupervised encoding, so fitted on all rows)."""
    parts = []
    for feature in features:
        if feature == "size":
            parts.append(frame[["width", "height"]].to_numpy(dtype=np.float64))
        else:
            parts.append(pd.get_dummies(frame[feature]).to_numpy(dtype=np.float64))
    return np.hstack(parts)


def _flag(frame: pd.DataFrame, cues: AcquisitionCues, label: str) -> CueFlag:
    """The features that pick `label` out on their own (else the two best), with their evidence."""
    scores = {f: cues.feature_auc[f][label] or 0.0 for f in FEATURES}
    features = [f for f in FEATURES if scores[f] > FLAG_AUC] or sorted(FEATURES, key=lambda f: -scores[f])[:2]
    evidence = [_evidence(frame, label, f) for f in features]
    return CueFlag(label, float(cues.auc[label] or 0.0), features, evidence)


def _evidence(frame: pd.DataFrame, label: str, feature: str) -> str:
    """'file format JPEG in 100% of X, 0% of the others' for the class's most frequent value."""
    inside = frame["label"] == label
    value = frame.loc[inside, feature].value_counts().index[0]
    share_in = (frame.loc[inside, feature] == value).mean()
    share_out = (frame.loc[~inside, feature] == value).mean()
    return f"{FEATURE_NAMES[feature]} {value} in {share_in:.0%} of {label}, {share_out:.0%} of the others"


def _small_classes(frame: pd.DataFrame) -> str:
    """A warning naming the classes too small for a stable AUC, or ''."""
    counts = frame["label"].value_counts()
    small = counts[counts < MIN_STABLE]
    if small.empty:
        return ""
    listed = ", ".join(f"{label} {n}" for label, n in small.sort_index().items())
    return f" Classes of fewer than {MIN_STABLE} images make these AUCs unreliable ({listed})."


def _verdict(cues: AcquisitionCues) -> str:
    """FLAG naming each class and its separating features, else OK with the largest AUC."""
    if not cues.flagged:
        largest = max((v for k, v in cues.auc.items() if k != "overall" and v is not None), default=0.0)
        return (
            "OK: file format, colour mode, bit depth, size and file-name pattern do not predict the label "
            f"(cross-validated one-vs-rest AUC at most {largest:.2f}, flag above {FLAG_AUC})."
        )
    parts = [f"{f.label} (AUC {f.auc:.2f}: " + "; ".join(f.evidence) + ")" for f in cues.flagged]
    text = "FLAG: the files alone give the label away for " + ", ".join(parts) + "."
    if all(f.features == ["name_pattern"] for f in cues.flagged):
        return text + (
            " Only the file names differ: a model cannot read them, but names that differ by class often "
            "mean a different origin or preparation (or the label was taken from the name), so check that "
            "the pixels do not differ too."
        )
    return text + (
        " A model can learn how the images were stored instead of the disease: store every class alike "
        "(one format, colour mode, bit depth and size) or take each class from the same acquisition."
    )


def cue_summary(cues: AcquisitionCues | None) -> str:
    """The summary table's cell: FLAG with the flagged classes, OK with the largest AUC, or SKIP."""
    if cues is None:
        return "not run"
    if cues.skipped:
        return f"SKIP: {escape(cues.skipped)}"
    if cues.flag:
        return "[red]FLAG: " + ", ".join(f"{escape(f.label)} {f.auc:.2f}" for f in cues.flagged) + "[/red]"
    return f"OK (at most {max(v or 0.0 for k, v in cues.auc.items() if k != 'overall'):.2f})"


def _cue_values_table(cues: AcquisitionCues) -> Table:
    """Feature x class: the two most frequent values of each feature in each class, with their share."""
    table = Table(title="Acquisition cues: most frequent values per class")
    table.add_column("feature")
    for label in cues.classes:
        table.add_column(escape(label), overflow="fold")
    for feature in FEATURES:
        cells = []
        for label in cues.classes:
            counts = cues.distributions[label][feature]
            total = sum(counts.values())
            top = [f"{escape(v)} {n / total:.0%}" for v, n in list(counts.items())[:2]]
            cells.append("\n".join(top + (["..."] if len(counts) > 2 else [])))
        table.add_row(FEATURE_NAMES[feature], *cells)
    return table


def _cue_auc_table(cues: AcquisitionCues) -> Table:
    """Feature x class: cross-validated one-vs-rest AUC of each feature alone and of all together."""
    table = Table(title=f"Acquisition cues: CV one-vs-rest AUC (flag > {FLAG_AUC})")
    table.add_column("features")
    for label in [*cues.classes, "overall"]:
        table.add_column(escape(label), justify="right", overflow="fold")
    rows = [(FEATURE_NAMES[f], cues.feature_auc[f]) for f in FEATURES] + [("all together", cues.auc)]
    for name, aucs in rows:
        cells = [_auc_cell(aucs[label]) for label in [*cues.classes, "overall"]]
        table.add_row(f"[bold]{name}[/bold]" if name == "all together" else name, *cells)
    return table


def _auc_cell(value: float | None) -> str:
    """An AUC, red above the flag threshold, '-' when undefined."""
    if value is None:
        return "-"
    return f"[red]{value:.2f}[/red]" if value > FLAG_AUC else f"{value:.2f}"


def print_acquisition(cues: AcquisitionCues, console: Console, sources: set[str]) -> None:
    """The cue tables and verdict, and why a single source name is then no all-clear."""
    if not cues.skipped:
        console.print(_cue_values_table(cues))
        console.print(_cue_auc_table(cues))
    colour = "red" if cues.flag else "green" if not cues.skipped else "yellow"
    console.print(f"[{colour}]acquisition cues: {escape(cues.verdict)}[/{colour}]")
    if cues.flag and len(sources) == 1:
        console.print(
            f"[red]Every image carries one source name ({escape(next(iter(sources)))}), but the classes were "
            "not stored alike: one source is no all-clear here.[/red]"
        )
