"""Splits: patient/duplicate grouping, stratified fractions, given splits, k-fold, balancing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covid_cxr.data.manifest import COLUMNS
from covid_cxr.data.readers import read_source
from covid_cxr.data.splits import (
    assert_no_leakage,
    class_weights,
    group_ids,
    kfold,
    leakage_report,
    split_manifest,
    undersample,
)
from covid_cxr.errors import DataError

LABELS = ["COVID", "Normal", "Viral"]


def synthetic_manifest(n: int = 600, n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Imbalanced labels; most patients have several images of one label; a few duplicate files."""
    rng = np.random.default_rng(seed)
    patient_label = rng.choice(LABELS, n_patients, p=[0.2, 0.4, 0.4])
    patients = rng.integers(0, n_patients, n)
    frame = pd.DataFrame(
        {
            "path": [f"/data/img{i}.png" for i in range(n)],
            "label": patient_label[patients],
            "patient_id": [f"p{p}" for p in patients],
            "source": "synthetic",
            "view": "PA",
            "width": 64,
            "height": 64,
            "sha256": [f"{i:064x}" for i in range(n)],
        },
        columns=COLUMNS,
    )
    for a, b in [(1, 2), (10, 400), (50, 599)]:  # identical files under different patient ids
        if b < n:
            frame.loc[b, "sha256"] = frame.loc[a, "sha256"]
    return frame


def fractions(split: pd.Series) -> dict[str, float]:
    """Share of rows per split name."""
    return split.value_counts(normalize=True).to_dict()


def patient_splits(frame: pd.DataFrame, column: str = "patient_id") -> pd.Series:
    """Number of distinct splits each key appears in."""
    return frame.groupby(column)["split"].nunique()


def test_default_split_is_seed_000_fractions_grouped_and_stratified() -> None:
    frame = synthetic_manifest()
    out = split_manifest(frame, test_fraction=0.1, val_fraction=0.15, seed=1)
    share = fractions(out["split"])
    assert share["test"] == pytest.approx(0.10, abs=0.03)
    assert share["val"] / (1 - share["test"]) == pytest.approx(0.15, abs=0.03)
    assert (patient_splits(out) == 1).all()
    assert (patient_splits(out, "sha256") == 1).all()
    overall = frame["label"].value_counts(normalize=True)
    for name in ("train", "val", "test"):
        per_split = out.loc[out["split"] == name, "label"].value_counts(normalize=True)
        assert (per_split - overall).abs().max() < 0.06, name
    assert leakage_report(out)["ok"]
    assert_no_leakage(out)
    assert out.drop(columns="split").equals(frame)
    assert "split" not in frame


def test_seed_002_80_20_without_validation() -> None:
    out = split_manifest(synthetic_manifest(), test_fraction=0.2, val_fraction=0.0, seed=3)
    share = fractions(out["split"])
    assert set(share) == {"train", "test"}
    assert share["test"] == pytest.approx(0.2, abs=0.03)


def test_duplicate_files_stay_in_one_split_even_across_patients() -> None:
    frame = synthetic_manifest()
    out = split_manifest(frame, seed=5)
    for a, b in [(1, 2), (10, 400), (50, 599)]:
        assert out.loc[a, "split"] == out.loc[b, "split"]
    grp = group_ids(frame)
    assert grp[10] == grp[400]
    assert (group_ids(frame)[frame["patient_id"] == frame.loc[10, "patient_id"]] == grp[400]).all()


def test_extra_groups_keep_near_duplicates_together() -> None:
    frame = synthetic_manifest(n=200, n_patients=200, seed=7)
    near = np.arange(len(frame))
    near[[3, 100, 150]] = 3
    for seed in range(5):
        out = split_manifest(frame, group_by_patient=False, groups=near, seed=seed)
        assert out.loc[[3, 100, 150], "split"].nunique() == 1


def test_missing_values_never_link_rows() -> None:
    frame = synthetic_manifest(n=6, n_patients=6)
    frame["patient_id"] = ["", None, np.nan, "x", "x", ""]
    frame["sha256"] = [None, None, "", "", "h", "h"]
    assert len(set(group_ids(frame))) == 4  # rows 3, 4, 5 linked by patient x and file h


def test_split_is_deterministic_for_a_seed() -> None:
    frame = synthetic_manifest()
    first = split_manifest(frame, seed=11)["split"]
    assert first.equals(split_manifest(frame, seed=11)["split"])
    assert not first.equals(split_manifest(frame, seed=12)["split"])


def test_test_per_class_holds_out_exactly_n_per_class() -> None:
    out = split_manifest(synthetic_manifest(), test_per_class=15, val_fraction=0.2, seed=4)
    assert out.loc[out["split"] == "test", "label"].value_counts().to_dict() == {name: 15 for name in LABELS}
    assert (patient_splits(out) == 1).all()
    assert (out["split"] == "val").any()


def test_test_per_class_refuses_to_split_a_group() -> None:
    frame = synthetic_manifest(n=12, n_patients=6)
    frame["label"] = ["a"] * 6 + ["b"] * 6
    frame["patient_id"] = [f"p{i // 2}" for i in range(12)]  # every patient has two images
    with pytest.raises(DataError, match="without splitting"):
        split_manifest(frame, test_per_class=1)
    with pytest.raises(DataError, match="class sizes"):
        split_manifest(frame, test_per_class=6)


def test_given_split_is_kept_and_val_is_carved_from_train() -> None:
    frame = synthetic_manifest()
    patients = pd.factorize(frame["patient_id"])[0]
    given = np.where(patients % 5 == 0, "test", "train")
    frame["split"] = given
    out = split_manifest(frame, val_fraction=0.2, seed=2)
    assert (out.loc[given == "test", "split"] == "test").all()
    carved = out.loc[given == "train", "split"]
    grp = group_ids(frame)
    shares_test_file = np.isin(grp, grp[given == "test"])[given == "train"]
    assert shares_test_file.any()
    assert ((carved == "test").to_numpy() == shares_test_file).all(), "only groups shared with test move"
    assert set(carved[~shares_test_file]) == {"train", "val"}
    assert (carved == "val").mean() == pytest.approx(0.2, abs=0.04)
    ignored = split_manifest(frame, use_given_split=False, test_fraction=0.1, seed=2)
    assert (ignored["split"] == "test").mean() == pytest.approx(0.1, abs=0.03)


def test_unknown_split_values_are_an_error() -> None:
    frame = synthetic_manifest(n=10).assign(split="holdout")
    with pytest.raises(DataError, match="holdout"):
        split_manifest(frame)


def test_leakage_report_and_assert_name_what_is_shared() -> None:
    frame = synthetic_manifest(n=6, n_patients=6)
    frame["patient_id"] = ["a", "a", "b", "c", "d", "e"]
    frame["sha256"] = ["h0", "h1", "h2", "h3", "h4", "h3"]
    frame["split"] = ["train", "test", "train", "train", "val", "test"]
    report = leakage_report(frame)
    assert report["patients"]["count"] == 1
    assert report["patients"]["examples"] == [{"patient_id": "a", "splits": ["test", "train"]}]
    assert report["sha256"]["count"] == 1 and not report["ok"]
    with pytest.raises(DataError, match=r"1 patients in several splits, e\.g\. a \(test/train\)"):
        assert_no_leakage(frame)
    frame.loc[1, "split"] = "train"
    with pytest.raises(DataError, match="sha256"):
        assert_no_leakage(frame)
    with pytest.raises(DataError, match="no split column"):
        leakage_report(frame.drop(columns="split"))


def test_kfold_folds_are_disjoint_complete_grouped_and_deterministic() -> None:
    frame = synthetic_manifest(n=300, n_patients=150)
    folds = kfold(frame, 5, seed=3)
    assert len(folds) == 5
    all_val = np.concatenate([val for _, val in folds])
    assert sorted(all_val) == list(range(len(frame)))
    grp = group_ids(frame)
    for train, val in folds:
        assert not set(train) & set(val)
        assert len(train) + len(val) == len(frame)
        assert not set(grp[train]) & set(grp[val])
        assert len(val) / len(frame) == pytest.approx(0.2, abs=0.04)
    again = kfold(frame, 5, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    with pytest.raises(DataError):
        kfold(frame, 1)


def test_undersample_to_the_smallest_class() -> None:
    frame = synthetic_manifest()
    smallest = frame["label"].value_counts().min()
    out = undersample(frame, seed=0)
    assert out["label"].value_counts().to_dict() == {name: smallest for name in LABELS}
    assert set(out["path"]) <= set(frame["path"])
    assert out.equals(undersample(frame, seed=0))
    assert not out.equals(undersample(frame, seed=1))


def test_class_weights_match_seed_004() -> None:
    labels = ["COVID-19"] * 179 + ["NORMAL"] * 1301 + ["VIRAL"] * 1305
    weights = class_weights(labels, ["COVID-19", "NORMAL", "VIRAL"])
    assert weights == pytest.approx({"COVID-19": 5.18621974, "NORMAL": 0.71355368, "VIRAL": 0.71136654})
    with pytest.raises(DataError, match="VIRAL"):
        class_weights(["COVID-19", "NORMAL"], ["COVID-19", "NORMAL", "VIRAL"])


def test_bad_fractions_are_an_error() -> None:
    with pytest.raises(DataError, match="test_fraction"):
        split_manifest(synthetic_manifest(n=20), test_fraction=1.0)


@pytest.mark.shared_data
def test_kermany_patient_grouped_split_shares_no_patient(shared_data: Path) -> None:
    frame = read_source(shared_data / "kermany-224", reader="kermany", pneumonia_types=True).manifest
    assert len(frame) > 100 and frame["patient_id"].duplicated().any()
    out = split_manifest(frame, use_given_split=False, test_fraction=0.2, val_fraction=0.15, seed=0)
    assert leakage_report(out)["ok"]
    assert (patient_splits(out) == 1).all()
    assert fractions(out["split"])["test"] == pytest.approx(0.2, abs=0.04)
    kept = split_manifest(frame, val_fraction=0.15, seed=0)
    assert (kept.loc[frame["split"] == "test", "split"] == "test").all()
    carved = kept[kept["split"] != "test"]
    assert carved.groupby("patient_id")["split"].nunique().max() == 1
    assert leakage_report(kept)["ok"], "the given split's shared patients were moved into test"
    moved = kept[(frame["split"] == "train") & (kept["split"] == "test")]
    assert set(moved["patient_id"]) <= set(frame.loc[frame["split"] == "test", "patient_id"])
