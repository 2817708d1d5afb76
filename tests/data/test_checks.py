"""Data checks: unreadable files, duplicates, class and source statistics, usability, rendering."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from covid_cxr.data.checks import (
    _near_pairs,
    duplicate_group_ids,
    render_report,
    run_checks,
    save_report,
    usable_manifest,
)
from covid_cxr.data.manifest import Problem, make_manifest


def pattern(seed: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth random grey image, different for each seed (distinct perceptual hashes)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255).astype(
        np.uint8
    )


def write(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Save an array as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def manifest_of(root: Path, source: str = "test"):
    """Folder per class: label = sub-folder name."""
    rows = [{"path": p, "label": p.parent.name} for p in sorted(root.rglob("*")) if p.is_file()]
    return make_manifest(rows, source)


@pytest.fixture
def images(tmp_path: Path) -> dict:
    """Class a: two images, an exact copy and three broken files; class b: an image, its noisy
    JPEG re-encoding and two different images."""
    arrays = {
        "a1": pattern(1),
        "a2": pattern(2, 40, 30),
        "b1": pattern(3, 50, 70),
        "b2": pattern(4),
        "b3": pattern(5, 80, 60),
    }
    paths = {name: write(tmp_path / name[0] / f"{name}.png", arr) for name, arr in arrays.items()}
    paths["a1_copy"] = Path(shutil.copy(paths["a1"], tmp_path / "a" / "a1_copy.png"))
    noisy = arrays["b1"].astype(int) + np.random.default_rng(9).integers(-3, 4, arrays["b1"].shape)
    paths["b1_near"] = write(
        tmp_path / "b" / "b1_near.jpg", np.clip(noisy, 0, 255).astype(np.uint8), quality=90
    )
    good = (tmp_path / "a" / "a2.png").read_bytes()
    (tmp_path / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "a" / "x.png").write_text("this is not an image\n")
    return {"root": tmp_path, "arrays": arrays, "paths": {k: str(v) for k, v in paths.items()}}


def test_unreadable_files_are_listed_with_distinct_reasons(images):
    report = run_checks(manifest_of(images["root"]))
    reasons = {Path(u.path).name: u.reason for u in report.unreadable}
    assert set(reasons) == {"truncated.png", "empty.png", "x.png"}
    assert len(set(reasons.values())) == 3
    assert "0 bytes" in reasons["empty.png"]
    assert "not an image" in reasons["x.png"]
    assert "truncated" in reasons["truncated.png"]
    assert report.n_images == 10 and report.n_readable == 7
    assert report.usable


def test_exact_and_near_duplicates(images):
    paths = images["paths"]
    report = run_checks(manifest_of(images["root"]))
    assert [g.paths for g in report.exact_duplicates] == [sorted([paths["a1"], paths["a1_copy"]])]
    assert [g.paths for g in report.near_duplicates] == [sorted([paths["b1"], paths["b1_near"]])]
    assert not report.near_duplicates[0].conflicting

    manifest = manifest_of(images["root"])
    ids = dict(zip(manifest["path"], duplicate_group_ids(manifest, report), strict=True))
    assert ids[paths["a1"]] == ids[paths["a1_copy"]]
    assert ids[paths["b1"]] == ids[paths["b1_near"]]
    others = [ids[paths[k]] for k in ("a1", "a2", "b1", "b2", "b3")]
    assert len(set(others)) == len(others)
    assert len(set(ids.values())) == len(manifest) - 2


def test_near_duplicate_across_labels_is_conflicting(tmp_path):
    write(tmp_path / "a" / "one.png", pattern(7))
    write(tmp_path / "b" / "same.jpg", pattern(7), quality=95)
    write(tmp_path / "b" / "other.png", pattern(8))
    report = run_checks(manifest_of(tmp_path))
    assert len(report.near_duplicates) == 1
    assert report.near_duplicates[0].labels == ["a", "b"] and report.near_duplicates[0].conflicting
    assert report.exact_duplicates == []


def test_class_counts_sizes_and_intensity(images):
    arrays = images["arrays"]
    report = run_checks(manifest_of(images["root"]))
    stats = {c.label: c for c in report.classes}
    assert report.class_counts == {"a": 3, "b": 4}
    assert (stats["a"].images, stats["b"].images) == (6, 4)
    assert report.imbalance_ratio == pytest.approx(4 / 3)
    a_readable = [arrays["a1"], arrays["a2"], arrays["a1"]]
    assert (stats["a"].min_width, stats["a"].max_width) == (
        min(a.shape[1] for a in a_readable),
        max(a.shape[1] for a in a_readable),
    )
    assert (stats["a"].min_height, stats["a"].max_height) == (
        min(a.shape[0] for a in a_readable),
        max(a.shape[0] for a in a_readable),
    )
    b_shapes = [arrays[k].shape for k in ("b1", "b2", "b3")]
    assert stats["b"].max_width == max(s[1] for s in b_shapes)
    assert stats["b"].min_height == min(s[0] for s in b_shapes)
    pixels = np.concatenate([a.ravel() for a in a_readable]).astype(float)
    assert stats["a"].pixel_mean == pytest.approx(pixels.mean())
    assert stats["a"].pixel_std == pytest.approx(pixels.std())


def test_label_source_dependence_and_confounding(tmp_path):
    layout = [("a", "s1")] * 3 + [("a", "s2")] + [("b", "s2")] * 2 + [("b", "s3")] * 2
    rows = [
        {
            "path": write(tmp_path / f"{i}.png", pattern(100 + i)),
            "label": label,
            "source": source,
            "patient_id": f"p{i // 2}",
        }
        for i, (label, source) in enumerate(layout)
    ]
    report = run_checks(make_manifest(rows, "unused"))
    assert report.label_source == {"a": {"s1": 3, "s2": 1}, "b": {"s2": 2, "s3": 2}}
    dependence = {d.label: (d.source, d.share) for d in report.class_dependence}
    assert dependence["a"] == ("s1", pytest.approx(3 / 4))
    assert dependence["b"][1] == pytest.approx(2 / 4)
    assert [(c.source, c.label, c.share, c.images) for c in report.confounded_sources] == [
        ("s1", "a", 1.0, 3),
        ("s3", "b", 1.0, 2),
    ]
    assert (report.n_patients, report.max_images_per_patient) == (4, 2)
    assert report.mean_images_per_patient == pytest.approx(2.0)
    assert report.label_split == {}
    split = run_checks(
        make_manifest([dict(r, split=("test" if i % 4 == 0 else "train")) for i, r in enumerate(rows)], "x")
    )
    assert split.label_split == {"a": {"test": 1, "train": 3}, "b": {"test": 1, "train": 3}}


def test_single_source_is_not_confounding(images):
    report = run_checks(manifest_of(images["root"]))
    assert report.confounded_sources == []
    assert {d.label: d.share for d in report.class_dependence} == {"a": 1.0, "b": 1.0}


def test_report_is_json_safe_and_carries_problems(images, tmp_path):
    problems = [Problem("meta.csv:3", "missing label"), Problem("meta.csv:9", "file not found")]
    report = run_checks(manifest_of(images["root"]), problems=problems)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["problems"] == [
        {"path": "meta.csv:3", "reason": "missing label"},
        {"path": "meta.csv:9", "reason": "file not found"},
    ]
    assert data["class_counts"] == {"a": 3, "b": 4} and data["n_readable"] == 7
    assert len(data["unreadable"]) == 3
    save_report(report, tmp_path / "out" / "checks.json")
    assert json.loads((tmp_path / "out" / "checks.json").read_text()) == data


def test_unusable_with_one_class_or_nothing_readable(tmp_path):
    write(tmp_path / "a" / "one.png", pattern(1))
    write(tmp_path / "a" / "two.png", pattern(2))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    report = run_checks(manifest_of(tmp_path))
    assert not report.usable and "one class" in report.unusable_reason
    assert report.class_counts == {"a": 2, "b": 0}

    for name in ("one.png", "two.png"):
        (tmp_path / "a" / name).write_text("text")
    report = run_checks(manifest_of(tmp_path))
    assert not report.usable and report.unusable_reason == "no readable images"
    assert report.n_readable == 0 and report.imbalance_ratio is None
    assert json.dumps(report.to_dict())


def test_usable_manifest_drops_unreadable_rows(images):
    manifest = manifest_of(images["root"])
    report = run_checks(manifest)
    kept = usable_manifest(manifest, report)
    assert len(kept) == len(manifest) - 3
    assert not set(kept["path"]) & {u.path for u in report.unreadable}


def test_progress_and_workers(images):
    manifest = manifest_of(images["root"])
    calls = []
    report = run_checks(manifest, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, len(manifest)) for i in range(1, len(manifest) + 1)]
    assert run_checks(manifest, workers=2).to_dict() == report.to_dict()


def test_render_report_lists_everything(images):
    problems = [Problem(f"meta.csv:{i}", "missing label") for i in range(15)]
    report = run_checks(manifest_of(images["root"]), problems=problems)
    console = Console(record=True, width=240, file=io.StringIO())
    render_report(report, console, limit=10)
    text = console.export_text()
    for needle in (
        "width",
        "height",
        "Label x source",
        "Unreadable files",
        "empty file (0 bytes)",
        "not an image",
        "Exact duplicates",
        "Near duplicates",
        "a1_copy.png",
        "b1_near.jpg",
        "Reader problems",
        "meta.csv:9",
        "... and 5 more",
        "100%",  # the top source share of a one-source class
    ):
        assert needle in text
    assert "meta.csv:10" not in text


def test_near_pairs_finds_the_close_pair_among_20k_hashes():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    hashes[12_345] = hashes[17] ^ np.uint64(0b10101)  # three bits apart
    pairs = _near_pairs(hashes, 4)
    assert (17, 12_345) in pairs
    assert (17, 12_345) not in _near_pairs(hashes[:12_346], 2)
    assert all(int(np.bitwise_count(hashes[i] ^ hashes[j])) <= 4 for i, j in pairs)


def test_radiography_224_counts(shared_data):
    root = shared_data / "radiography-224"
    rows = [{"path": p, "label": p.parent.name} for p in sorted(root.glob("*/*")) if p.is_file()]
    report = run_checks(make_manifest(rows, "radiography-224"))
    assert report.class_counts == {"COVID": 300, "Normal": 300, "Viral Pneumonia": 300}
    assert report.unreadable == []
    assert report.usable and report.imbalance_ratio == 1.0
