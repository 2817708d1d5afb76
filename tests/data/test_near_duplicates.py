"""Near duplicates: phash candidates confirmed by gradient correlation, on phantoms, copies and real sets."""

from __future__ import annotations

from pathlib import Path

import cv2
import imagehash
import numpy as np
import pytest
from PIL import Image

from covid_cxr.data.checks import (
    NEAR_DUPLICATE_CORRELATION,
    NEAR_DUPLICATE_DISTANCE,
    _aligned_correlation,
    _near_pairs,
    _thumbnail,
    duplicate_group_ids,
    run_checks,
)
from covid_cxr.data.manifest import make_manifest
from covid_cxr.data.readers import read_source
from covid_cxr.data.synthetic import synthesize


def phash_pairs(paths: list[str]) -> list[tuple[int, int]]:
    """Index pairs whose perceptual hashes alone make them near-duplicate candidates."""
    hashes = [int(str(imagehash.phash(Image.open(p).convert("L"))), 16) for p in paths]
    return _near_pairs(np.array(hashes, dtype=np.uint64), NEAR_DUPLICATE_DISTANCE)


def stems(groups) -> list[list[str]]:
    """File names without suffix, per group."""
    return [[Path(p).stem for p in g.paths] for g in groups]


@pytest.mark.parametrize("seed", [0, 1])
def test_phantoms_of_different_patients_are_not_grouped(tmp_path, seed):
    manifest = synthesize(tmp_path, n=300, size=64, seed=seed)
    patient = dict(zip(manifest["path"], manifest["patient_id"], strict=True))
    paths, labels = manifest["path"].tolist(), manifest["label"].tolist()
    across = [(i, j) for i, j in phash_pairs(paths) if patient[paths[i]] != patient[paths[j]]]
    # phash alone pairs phantoms of different patients, some of different classes
    assert len(across) > 10 and any(labels[i] != labels[j] for i, j in across)

    report = run_checks(manifest)
    assert not any(g.conflicting for g in report.near_duplicates)
    # what remains are re-exposures of one patient's scene (synthesize gives ~15% of patients two)
    assert all(len({patient[p] for p in g.paths}) == 1 for g in report.near_duplicates)


def variants(image: np.ndarray) -> dict[str, tuple[np.ndarray, dict]]:
    """Copies of one image, as a dataset might hold them: (array, PIL save options) by file name."""
    h, w = image.shape
    y, x = round(0.02 * h), round(0.02 * w)
    bigger = cv2.resize(image, (w * 3 // 2, h * 3 // 2), interpolation=cv2.INTER_CUBIC)
    smaller = cv2.resize(image, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)
    return {
        "up15_q85.jpg": (bigger, {"quality": 85}),
        "down75_q85.jpg": (smaller, {"quality": 85}),
        "brighter.png": (np.clip(image.astype(int) + 12, 0, 255).astype(np.uint8), {}),
        "contrast.png": (np.clip((image.astype(float) - 128) * 1.1 + 128, 0, 255).astype(np.uint8), {}),
        "crop2pct.png": (image[y : h - y, x : w - x], {}),
        "top_crop2pct.png": (image[y:], {}),
    }


def test_copies_of_a_phantom_stay_grouped_with_it(tmp_path):
    manifest = synthesize(tmp_path / "phantoms", n=24, size=64, seed=2)
    singles = manifest[~manifest["patient_id"].duplicated(keep=False)]
    original = singles["path"].iloc[0]
    rows = manifest[["path", "label", "patient_id"]].to_dict("records")
    copies = variants(np.asarray(Image.open(original)))
    for name, (array, options) in copies.items():
        path = tmp_path / "copies" / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(path, **options)
        rows.append({"path": str(path), "label": singles["label"].iloc[0], "patient_id": "copies"})
    frame = make_manifest(rows, "test")

    report = run_checks(frame)
    groups = [g for g in report.near_duplicates if original in g.paths]
    assert len(groups) == 1
    assert sorted(Path(p).name for p in groups[0].paths) == sorted([Path(original).name, *copies])
    ids = dict(zip(frame["path"], duplicate_group_ids(frame, report), strict=True))
    assert len({ids[p] for p in groups[0].paths}) == 1


def test_copy_of_a_radiograph_stays_grouped(shared_data, tmp_path):
    source = shared_data / "radiography-224" / "Normal" / "Normal-2716.png"
    image = np.asarray(Image.open(source).convert("L"))
    rows = [{"path": source, "label": "Normal"}]
    for name, (array, options) in variants(image).items():
        Image.fromarray(array).save(tmp_path / name, **options)
        rows.append({"path": tmp_path / name, "label": "Normal"})
    report = run_checks(make_manifest(rows, "test"))
    assert [len(g.paths) for g in report.near_duplicates] == [len(rows)]


def test_aligned_correlation_of_a_crop_and_of_a_flat_image(tmp_path):
    manifest = synthesize(tmp_path, n=3, size=128, seed=4)
    thumb = _thumbnail(manifest["path"].iloc[0])
    image = np.asarray(Image.open(manifest["path"].iloc[0]))
    cropped = tmp_path / "cropped.png"
    Image.fromarray(image[3:, 2:-1]).save(cropped)  # 2% off the top, 1.5% and 1% off the sides
    assert _aligned_correlation(thumb, _thumbnail(str(cropped))) >= NEAR_DUPLICATE_CORRELATION
    other = _thumbnail(manifest["path"].iloc[1])
    assert _aligned_correlation(thumb, other) < NEAR_DUPLICATE_CORRELATION
    flat = np.full_like(thumb, 90)
    assert _aligned_correlation(flat, flat) == 0.0  # no structure to confirm: never a near duplicate


def test_radiography_224_duplicate_groups(shared_data):
    root = shared_data / "radiography-224"
    rows = [{"path": p, "label": p.parent.name} for p in sorted(root.glob("*/*")) if p.is_file()]
    report = run_checks(make_manifest(rows, "radiography-224"))
    assert stems(report.exact_duplicates) == [["COVID-3140", "COVID-3142"]]
    assert stems(report.near_duplicates) == [["COVID-320", "COVID-999"], ["COVID-53", "COVID-729"]]
    # a looser hash distance adds phash candidates but no unconfirmed groups
    loose = run_checks(make_manifest(rows, "radiography-224"), near_duplicate_distance=8)
    assert stems(loose.near_duplicates) == stems(report.near_duplicates)


def test_figure1_near_duplicate_pair(shared_data):
    manifest = read_source(shared_data / "figure1").manifest
    report = run_checks(manifest)
    assert report.exact_duplicates == []
    assert stems(report.near_duplicates) == [["COVID-00033", "COVID-00037"]]
