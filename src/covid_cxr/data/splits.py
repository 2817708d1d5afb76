"""Train/val/test splits that keep patients and duplicate images inside one split.

Rows are grouped by connected components over `patient_id`, `sha256` and optional extra group ids
(e.g. near-duplicate clusters from the checks), so no patient and no identical file ever appears in
two splits. Grouped, label-stratified hold-outs use scikit-learn's StratifiedGroupKFold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

from covid_cxr.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_MAX_FOLDS = 20


def group_ids(
    manifest: pd.DataFrame, group_by_patient: bool = True, groups: Sequence | None = None
) -> np.ndarray:
    """Integer group per row: connected components over patient_id, sha256 and extra group ids.

    Empty or missing values (None, NaN, "") never join rows together.
    """
    n = len(manifest)
    keys: list[pd.Series] = [manifest["sha256"]] if "sha256" in manifest else []
    if group_by_patient and "patient_id" in manifest:
        keys.append(manifest["patient_id"])
    if groups is not None:
        if len(groups) != n:
            raise DataError(f"groups has {len(groups)} entries but the manifest has {n} rows")
        keys.append(pd.Series(list(groups), index=manifest.index))
    rows, cols, offset = [], [], n
    for key in keys:
        values = key.astype(object).where(key.notna() & (key.astype(str) != ""), None)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        linked = np.flatnonzero(codes >= 0)
        rows.append(linked)
        cols.append(offset + codes[linked])
        offset += len(uniques)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=int)
    graph = coo_matrix((np.ones(len(row), dtype=np.int8), (row, col)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0]


def split_manifest(
    manifest: pd.DataFrame,
    test_fraction: float = 0.1,
    val_fraction: float = 0.15,
    group_by_patient: bool = True,
    seed: int = 42,
    test_per_class: int | None = None,
    use_given_split: bool = True,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """Copy of the manifest with a `split` column in {train, val, test}.

    The test set is `test_fraction` of all rows (or exactly `test_per_class` per label); validation
    is `val_fraction` of what remains. A split the source already provides (Kermany train/test) is
    kept when `use_given_split`, and only validation is carved out of its train part.
    """
    _check_fractions(test_fraction, val_fraction)
    out = manifest.copy()
    labels = out["label"].astype(str).to_numpy()
    grp = group_ids(out, group_by_patient, groups)
    given = _given_split(out) if use_given_split else None
    if given is not None:
        split = _repair_given_leaks(given, grp)
    else:
        split = np.full(len(out), "train", dtype=object)
        if test_per_class is not None:
            split[_take_per_class(labels, grp, test_per_class, seed)] = "test"
        elif test_fraction > 0:
            split[_grouped_holdout(labels, grp, test_fraction, seed)] = "test"
    if val_fraction > 0 and not (split == "val").any():
        train = np.flatnonzero(split == "train")
        split[train[_grouped_holdout(labels[train], grp[train], val_fraction, seed)]] = "val"
    out["split"] = split
    counts = out["split"].value_counts()
    log.info("split %d rows: %s", len(out), ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS))
    return out


def kfold(
    manifest: pd.DataFrame, k: int, seed: int = 42, group_by_patient: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, grouped k-fold: (train positions, validation positions) per fold."""
    if k < 2:
        raise DataError(f"kfold needs k >= 2, got {k}")
    grp = group_ids(manifest, group_by_patient)
    if k > len(np.unique(grp)):
        raise DataError(f"kfold: k={k} exceeds the {len(np.unique(grp))} independent groups")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    labels = manifest["label"].astype(str).to_numpy()
    return [(tr, va) for tr, va in sgkf.split(np.zeros(len(labels)), labels, grp)]


def undersample(manifest: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """Randomly keep as many rows of every label as the smallest label has (seed 000)."""
    if manifest.empty:
        return manifest.copy()
    smallest = int(manifest["label"].value_counts().min())
    kept = manifest.groupby("label", sort=True).sample(n=smallest, random_state=seed)
    return kept.sort_index().reset_index(drop=True)


def class_weights(labels: Sequence, classes: Sequence[str]) -> dict[str, float]:
    """Balanced class weights n_samples / (n_classes * count) per class (seed 004)."""
    y = np.asarray([str(v) for v in labels])
    names = np.asarray([str(c) for c in classes])
    missing = sorted(set(names) - set(y))
    if missing:
        raise DataError(f"cannot weight classes with no samples: {', '.join(missing)}")
    weights = compute_class_weight("balanced", classes=names, y=y)
    return {str(name): float(w) for name, w in zip(names, weights, strict=True)}


def leakage_report(manifest: pd.DataFrame, examples: int = 10) -> dict:
    """Patients and identical files (sha256) found in more than one split, with examples."""
    if "split" not in manifest:
        raise DataError("the manifest has no split column: split it before checking for leakage")
    report = {}
    for column, name in (("patient_id", "patients"), ("sha256", "sha256")):
        shared = _shared_across_splits(manifest, column)
        report[name] = {
            "count": len(shared),
            "examples": [{column: key, "splits": splits} for key, splits in list(shared.items())[:examples]],
        }
    report["ok"] = report["patients"]["count"] == 0 and report["sha256"]["count"] == 0
    return report


def assert_no_leakage(manifest: pd.DataFrame, patients: bool = True) -> None:
    """Raise DataError listing patients (unless `patients` is False) or files shared across splits."""
    report = leakage_report(manifest)
    parts = []
    for name, column in (("patients", "patient_id"), ("sha256", "sha256")):
        if report[name]["count"] and (patients or name != "patients"):
            shown = ", ".join(f"{e[column]} ({'/'.join(e['splits'])})" for e in report[name]["examples"])
            parts.append(f"{report[name]['count']} {name} in several splits, e.g. {shown}")
    if parts:
        raise DataError("split leakage: " + "; ".join(parts))


def _shared_across_splits(manifest: pd.DataFrame, column: str) -> dict[str, list[str]]:
    """Values of `column` (ignoring empty ones) that occur in more than one split, with those splits."""
    if column not in manifest:
        return {}
    frame = manifest[[column, "split"]].dropna()
    frame = frame[frame[column].astype(str) != ""]
    splits = frame.groupby(column)["split"].agg(lambda s: sorted(set(s)))
    return {str(key): value for key, value in splits[splits.map(len) > 1].items()}


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    """Fractions must lie in [0, 1)."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value}")


def _given_split(manifest: pd.DataFrame) -> np.ndarray | None:
    """The source's own split when it is complete and names a test set, else None."""
    if "split" not in manifest:
        return None
    values = manifest["split"].fillna("").astype(str).str.strip().str.lower()
    if (values == "").all():
        return None
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise DataError(f"the manifest's split column has unknown values {bad}; expected {list(SPLITS)}")
    if not (values == "test").any():
        log.info("the manifest's split column names no test rows: splitting afresh")
        return None
    return values.to_numpy(dtype=object).copy()


def _repair_given_leaks(split: np.ndarray, grp: np.ndarray) -> np.ndarray:
    """Move every group that the source's own split shares across splits wholly into its test/val part."""
    split = split.copy()
    moved = 0
    for target in ("test", "val"):
        shared = np.isin(grp, np.unique(grp[split == target])) & (split != target) & (split != "test")
        moved += int(shared.sum())
        split[shared] = target
    if moved:
        log.warning(
            "the source's own split shared patients or files across splits: moved %d rows so that "
            "no patient or duplicate is in two splits",
            moved,
        )
    return split


def _fold_plan(fraction: float, max_folds: int) -> tuple[int, int]:
    """(n_splits, folds held out): the fewest folds within 0.5 % of `fraction`, else the closest."""
    best = None
    for n in range(2, max(2, min(_MAX_FOLDS, max_folds)) + 1):
        k = min(max(round(fraction * n), 1), n - 1)
        err = abs(k / n - fraction)
        if err <= 0.005:
            return n, k
        if best is None or err < best[0] - 1e-9:
            best = (err, n, k)
    return best[1], best[2]


def _grouped_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of about `fraction` of the rows, stratified by label, whole groups only."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"cannot hold out {fraction:.0%}: all {len(labels)} rows form one patient group")
    smallest_class = int(np.unique(labels, return_counts=True)[1].min())
    n_splits, take = _fold_plan(fraction, min(n_groups, max(smallest_class, 2)))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = [test for _, test in sgkf.split(np.zeros(len(labels)), labels, groups)]
    return np.sort(np.concatenate(folds[:take]))


def _take_per_class(labels: np.ndarray, groups: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Positions of exactly `per_class` rows of every label, made of whole groups."""
    counts = pd.Series(labels).value_counts()
    short = counts[counts <= per_class]
    if per_class < 1 or len(short):
        raise DataError(f"cannot hold out {per_class} test images per class; class sizes: {counts.to_dict()}")
    classes, y = np.unique(labels, return_inverse=True)
    uniq, g = np.unique(groups, return_inverse=True)
    per_group = np.zeros((len(uniq), len(classes)), dtype=int)
    np.add.at(per_group, (g, y), 1)
    taken = np.zeros(len(classes), dtype=int)
    chosen = []
    for idx in np.random.default_rng(seed).permutation(len(uniq)):
        if (taken + per_group[idx] <= per_class).all():
            taken += per_group[idx]
            chosen.append(idx)
            if (taken == per_class).all():
                return np.flatnonzero(np.isin(g, chosen))
    reached = dict(zip(classes.tolist(), taken.tolist(), strict=True))
    raise DataError(
        f"cannot hold out exactly {per_class} test images per class without splitting a patient or "
        f"duplicate group (reached {reached}); change test_per_class or set group_by_patient=False"
    )
