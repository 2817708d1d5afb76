"""Synthetic phantoms: determinism, anatomy, class patterns, learnability and the written dataset."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from covid_cxr.data.images import load_image
from covid_cxr.data.manifest import COLUMNS, load_manifest, sha256_file
from covid_cxr.data.synthetic import CLASS_NAMES, DEFAULT_CLASSES, render_phantom, synthesize
from covid_cxr.errors import ConfigError

SIZE = 64
SEEDS = range(8)


def _render(label: str, seed: int, size: int = SIZE, marker: bool = False):
    return render_phantom(label, np.random.default_rng(seed), size, marker=marker)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1, labels


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_render_is_deterministic_per_seed(label):
    first, again, other = _render(label, 3), _render(label, 3), _render(label, 4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    image, lesion, lungs = first
    assert image.shape == lesion.shape == lungs.shape == (SIZE, SIZE)
    assert (image.dtype, lesion.dtype, lungs.dtype) == (np.uint8, bool, bool)


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_lesion_mask_lies_in_two_lung_fields(label):
    for seed in SEEDS:
        _, lesion, lungs = _render(label, seed)
        assert _components(lungs)[0] == 2
        assert not (lesion & ~lungs).any()
        assert lesion.any() == (label != "normal")


def test_lungs_are_darker_than_the_mediastinum():
    for seed in SEEDS:
        image, _, lungs = _render("normal", seed)
        centre = image[SIZE // 4 : SIZE // 2, SIZE // 2 - 2 : SIZE // 2 + 2]
        assert image[lungs].mean() < centre.mean() - 40


def test_covid_opacities_are_bilateral_lower_and_peripheral():
    for seed in SEEDS:
        _, lesion, lungs = _render("covid", seed)
        ys, xs = np.nonzero(lungs)
        ly, lx = np.nonzero(lesion)
        assert (ly > (ys.min() + ys.max()) / 2).mean() > 0.6
        centre = (SIZE - 1) / 2
        assert (np.abs(lx - centre) > np.median(np.abs(xs - centre))).mean() > 0.6
        assert (lx < centre).any() and (lx > centre).any()


def test_bacterial_consolidation_is_one_patch_in_one_lung():
    for seed in SEEDS:
        _, lesion, lungs = _render("bacterial", seed)
        assert _components(lesion)[0] == 1
        _, lung_labels = _components(lungs)
        assert len(np.unique(lung_labels[lesion])) == 1


def test_viral_pattern_covers_both_lungs():
    for seed in SEEDS:
        _, lesion, lungs = _render("viral", seed)
        _, lung_labels = _components(lungs)
        for lung in (1, 2):
            ys = np.nonzero(lung_labels == lung)[0]
            lesion_ys = np.nonzero(lesion & (lung_labels == lung))[0]
            assert lesion_ys.max() - lesion_ys.min() > 0.7 * (ys.max() - ys.min())


@pytest.mark.parametrize("label", ["covid", "viral", "bacterial"])
def test_pattern_brightens_only_its_mask(label):
    for seed in SEEDS:
        sick, lesion, lungs = _render(label, seed)
        clear, _, clear_lungs = _render("normal", seed)
        np.testing.assert_array_equal(lungs, clear_lungs)
        diff = sick.astype(int) - clear.astype(int)
        assert diff[lesion].mean() > 15
        assert np.abs(diff[~_dilate(lesion, 3)]).max() <= 2
        assert not diff[~_dilate(lungs, 3)].any()


def test_marker_is_a_bright_corner_square():
    marked, _, _ = _render("normal", 5, marker=True)
    plain, _, _ = _render("normal", 5)
    changed = marked != plain
    ys, xs = np.nonzero(changed)
    assert (marked[changed] == 255).all()
    assert ys.max() < SIZE // 5 and xs.max() < SIZE // 5
    assert 0.04 * SIZE <= ys.max() - ys.min() + 1 <= 0.08 * SIZE


def test_a_linear_classifier_learns_the_classes():
    rng = np.random.default_rng(11)
    images, labels = [], []
    for i in range(150):
        label = DEFAULT_CLASSES[i % 3]
        image, _, _ = render_phantom(label, rng, SIZE)
        images.append(cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).ravel() / 255.0)
        labels.append(label)
    x, y = np.array(images), np.array(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(x[:100], y[:100])
    assert model.score(x[100:], y[100:]) >= 0.85


def test_synthesize_writes_layout_and_manifest(tmp_path):
    done = []
    frame = synthesize(tmp_path / "ds", n=40, size=32, seed=1, progress=done.append)
    root = tmp_path / "ds"
    on_disk = load_manifest(root / "manifest.csv")
    assert list(on_disk.columns) == COLUMNS + ["lesion_mask", "lung_mask", "marker"]
    assert on_disk["label"].value_counts().to_dict() == {"normal": 14, "covid": 13, "viral": 13}
    assert done[-1] == 40 and done == sorted(done)
    assert (on_disk["source"] == "synthetic").all() and not on_disk["marker"].any()
    for row in on_disk.itertuples():
        assert re.fullmatch(rf"{row.label}/{row.patient_id}-[12]\.png", row.path)
        assert load_image(root / row.path).shape == (32, 32) and sha256_file(root / row.path) == row.sha256
        assert set(np.unique(load_image(root / row.lung_mask))) == {0, 255}
        assert load_image(root / row.lesion_mask).any() == (row.label != "normal")
    assert frame["path"].map(lambda p: p.startswith(str(root.resolve()))).all()
    assert frame.drop(columns=["path", "lesion_mask", "lung_mask"]).equals(
        on_disk.drop(columns=["path", "lesion_mask", "lung_mask"])
    )


def test_some_patients_have_two_exposures_of_one_chest(tmp_path):
    synthesize(tmp_path, n=60, size=32, seed=2)
    frame = load_manifest(tmp_path / "manifest.csv")
    per_patient = frame.groupby("patient_id")
    sizes = per_patient.size()
    assert set(sizes) == {1, 2} and 0.08 <= (sizes == 2).mean() <= 0.25
    assert (per_patient["label"].nunique() == 1).all()
    pair = frame[frame["patient_id"] == sizes[sizes == 2].index[0]]
    first, second = (load_image(tmp_path / p) for p in pair["path"])
    lungs = [load_image(tmp_path / p) for p in pair["lung_mask"]]
    np.testing.assert_array_equal(lungs[0], lungs[1])
    assert not np.array_equal(first, second)


def test_synthesize_is_deterministic_and_marks_one_class(tmp_path):
    kwargs = {"n": 16, "classes": list(CLASS_NAMES), "size": 32, "shortcut_marker": True}
    first = synthesize(tmp_path / "a", seed=7, **kwargs)
    again = synthesize(tmp_path / "b", seed=7, **kwargs)
    other = synthesize(tmp_path / "c", seed=8, **kwargs)
    assert first["sha256"].tolist() == again["sha256"].tolist()
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert set(first["sha256"]).isdisjoint(other["sha256"])
    assert (first["marker"] == (first["label"] == "normal")).all()
    corners = pd.Series([load_image(p)[2:3, 2:3].min() for p in first["path"]], index=first.index)
    assert (corners[first["marker"]] == 255).all() and (corners[~first["marker"]] < 255).all()


BAD_REQUESTS = [
    {"classes": ["normal", "flu"]},
    {"classes": ["covid", "covid"]},
    {"n": 0},
    {"size": 16},
    {"seed": -1},
]


@pytest.mark.parametrize("kwargs", BAD_REQUESTS)
def test_invalid_requests_raise_config_errors(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        synthesize(tmp_path, **{"n": 3, "size": 32, **kwargs})
    assert not (tmp_path / "manifest.csv").exists()
