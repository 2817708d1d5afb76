"""Shortcut checks: confounding by hand, image edits, verdict rules, and the marker acceptance test."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from covid_cxr.data.synthetic import burn_marker
from covid_cxr.evaluation.evaluate import evaluate_run
from covid_cxr.evaluation.shortcuts import (
    BORDER_AUC_DROP,
    LUNGS_HIDDEN_AUC,
    border_crop_check,
    central_lung_mask,
    crop_border,
    hide_lungs,
    label_source_confounding,
    lung_mask,
    lungs_hidden_check,
)

CLASSES = ["covid", "normal", "viral"]


def _manifest(counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [(label, source) for (label, source), n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["label", "source"])


def test_confounded_sources_are_flagged_with_cramers_v_by_hand() -> None:
    counts = {("covid", "A"): 90, ("covid", "B"): 10, ("normal", "B"): 80, ("normal", "A"): 20}
    result = label_source_confounding(_manifest(counts))
    chi2 = chi2_contingency(np.array([[90, 10], [20, 80]]), correction=False)[0]
    assert result["cramers_v"] == pytest.approx(np.sqrt(chi2 / 200))
    assert result["largest_source"]["covid"] == {"source": "A", "share": 0.9}
    assert result["table"]["normal"] == {"A": 20, "B": 80}
    assert result["flag"] and result["verdict"].startswith("FLAG")


def test_balanced_sources_and_a_single_source_are_not_flagged() -> None:
    balanced = label_source_confounding(
        _manifest({("covid", "A"): 50, ("covid", "B"): 50, ("normal", "A"): 48, ("normal", "B"): 52})
    )
    assert balanced["cramers_v"] < 0.1 and not balanced["flag"] and balanced["verdict"].startswith("OK")
    single = label_source_confounding(_manifest({("covid", "A"): 5, ("normal", "A"): 5}))
    assert single["cramers_v"] is None and not single["flag"] and "one source" in single["verdict"]


def test_central_lung_mask_covers_two_lung_fields_not_the_mediastinum() -> None:
    mask = central_lung_mask(200, 160)
    assert mask.shape == (200, 160)
    n_parts, _ = cv2.connectedComponents(mask.astype(np.uint8))
    assert n_parts - 1 == 2
    assert mask[94, 46] and mask[94, 113]  # the ellipse centres
    assert not mask[:, 78:82].any() and not mask[0].any() and not mask[:, 0].any()
    assert 0.25 < mask.mean() < 0.45
    assert (mask == mask[:, ::-1]).mean() > 0.98  # left-right symmetric


def test_hide_lungs_fills_the_mask_with_the_median_outside_it() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
    original = image.copy()
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 5:20] = True
    out = hide_lungs(image, mask)
    assert (out[mask] == round(float(np.median(image[~mask])))).all()
    assert (out[~mask] == image[~mask]).all()
    assert (image == original).all()
    rgb = np.stack([image, image // 2, 255 - image], axis=2)
    out_rgb = hide_lungs(rgb, mask)
    for c in range(3):
        assert (out_rgb[..., c][mask] == round(float(np.median(rgb[..., c][~mask])))).all()


def test_lung_mask_from_a_file_is_resized_and_slightly_grown(tmp_path: Path) -> None:
    small = np.zeros((50, 50), dtype=np.uint8)
    small[10:40, 10:20] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), small)
    mask = lung_mask(np.zeros((100, 100), dtype=np.uint8), str(tmp_path / "mask.png"))
    assert mask.shape == (100, 100)
    assert mask[20:80, 20:40].all()  # the resized mask
    assert mask[20:80, 18].all() and not mask[50, 60]  # grown by a few pixels, not more
    assert (lung_mask(np.zeros((60, 80), dtype=np.uint8)) == central_lung_mask(60, 80)).all()


def test_crop_border_removes_a_corner_marker_and_keeps_the_size() -> None:
    image = np.full((64, 64), 100, dtype=np.uint8)
    marked = burn_marker(image)
    assert marked.max() == 255
    cropped = crop_border(marked)
    assert cropped.shape == (64, 64) and cropped.max() == 100
    frame = np.full((50, 50, 3), 255, dtype=np.uint8)
    frame[5:45, 5:45] = 30
    assert (crop_border(frame) == 30).all()


def test_lungs_hidden_rules() -> None:
    y = np.repeat([0, 1, 2], 20)
    full = np.eye(3)[y] * 0.9 + 0.03
    rng = np.random.default_rng(0)
    uninformed = rng.dirichlet([1, 1, 1], size=60)
    ok = lungs_hidden_check(y, full, uninformed, CLASSES)
    assert not ok["flag"] and ok["verdict"].startswith("OK")
    assert ok["balanced_accuracy_full"] == pytest.approx(1.0) and ok["chance"] == pytest.approx(1 / 3)
    # class 1 keeps a cue: its probability is higher for its own images, but argmax stays with class 2
    marked = uninformed * 0.2 + np.array([0.0, 0.2, 0.6])
    marked[y == 1, 1] += 0.15
    flagged = lungs_hidden_check(y, full, marked, CLASSES)
    assert flagged["balanced_accuracy_hidden"] == pytest.approx(1 / 3)
    assert flagged["auc_hidden"]["normal"] > 0.9
    assert flagged["flag"] and "'normal'" in flagged["verdict"]
    weak = lungs_hidden_check(y, uninformed, marked, CLASSES)
    assert not weak["flag"] and weak["verdict"].startswith("SKIP")


def test_border_crop_rules() -> None:
    y = np.repeat([0, 1, 2], 20)
    rng = np.random.default_rng(1)
    full = np.eye(3)[y] * 0.6 + rng.dirichlet([1, 1, 1], size=60) * 0.4
    shifted = full * 0.3 + np.array([0.0, 0.7, 0.0])  # every image looks 'normal' now; the ranking is kept
    ok = border_crop_check(y, full, shifted, CLASSES)
    assert ok["balanced_accuracy_cropped"] == pytest.approx(1 / 3)
    assert not ok["flag"] and max(ok["auc_drop"].values()) == pytest.approx(0.0, abs=1e-12)
    lost = full.copy()
    lost[:, 1] = rng.permutation(lost[:, 1])
    flagged = border_crop_check(y, full, lost, CLASSES)
    assert flagged["flag"] and "'normal'" in flagged["verdict"]


@pytest.mark.slow
def test_a_marker_shortcut_is_flagged(marker_run: Path) -> None:
    checks = evaluate_run(marker_run, bootstrap=0)["shortcuts"]
    hidden = checks["lungs_hidden"]
    assert hidden["lung_masks"]["fixed_ellipses"] == 0 and hidden["lung_masks"]["manifest"] > 0
    assert hidden["flag"] and "'normal'" in hidden["verdict"]
    assert hidden["auc_hidden"]["normal"] >= LUNGS_HIDDEN_AUC
    assert hidden["verdict"] in checks["flags"]


@pytest.mark.slow
def test_phantoms_without_the_marker_are_not_flagged(clean_run: Path) -> None:
    result = evaluate_run(clean_run, bootstrap=0)
    assert result["metrics"]["headline"]["accuracy"] >= 0.9
    checks = result["shortcuts"]
    assert checks["flags"] == []
    assert max(checks["lungs_hidden"]["auc_hidden"].values()) < LUNGS_HIDDEN_AUC
    assert max(checks["border_crop"]["auc_drop"].values()) < BORDER_AUC_DROP
    assert checks["confounding"]["verdict"].startswith("SKIP")  # one source: not measurable, not "OK"
