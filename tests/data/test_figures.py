"""Inspection figures: every PNG is written, valid and non-trivial; broken files are skipped."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from covid_cxr.data.checks import run_checks
from covid_cxr.data.figures import inspect_figures
from covid_cxr.data.manifest import make_manifest

EXPECTED = {
    "class_counts.png",
    "sizes_per_class.png",
    "intensity_histograms.png",
    "sample_grid_COVID.png",
    "sample_grid_Viral_Pneumonia.png",
}


@pytest.fixture
def manifest(tmp_path):
    """Two classes of small grey and RGB images, plus a truncated and a zero-byte file."""
    rng = np.random.default_rng(0)
    rows = []
    for label, count, offset in (("COVID", 5, 60), ("Viral Pneumonia", 3, 120)):
        for i in range(count):
            shape = (32 + 4 * i, 48) if i % 2 else (40, 40, 3)
            path = tmp_path / "img" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(offset, offset + 100, shape, dtype=np.uint8)).save(path)
            rows.append({"path": path, "label": label})
    good = rows[0]["path"].read_bytes()
    broken = {"truncated.png": good[: len(good) // 2], "empty.png": b""}
    for name, data in broken.items():
        (tmp_path / "img" / "COVID" / name).write_bytes(data)
        rows.append({"path": tmp_path / "img" / "COVID" / name, "label": "COVID"})
    return make_manifest(rows, "test")


def assert_valid_pngs(paths, out_dir):
    """Every file is a PNG of real size with more than one colour; nothing else was left behind."""
    assert {p.name for p in paths} == EXPECTED
    assert {p.name for p in out_dir.iterdir()} == EXPECTED  # no temporary files remain
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert min(im.size) >= 200
            assert np.asarray(im.convert("L")).std() > 1
        assert path.stat().st_size > 5_000


def test_figures_written_and_valid(manifest, tmp_path):
    rc_before = dict(matplotlib.rcParams)
    out = tmp_path / "figures"
    paths = inspect_figures(manifest, out, per_class=6, seed=0)
    assert_valid_pngs(paths, out)
    assert dict(matplotlib.rcParams) == rc_before


def test_figures_with_report_skip_unreadable(manifest, tmp_path):
    report = run_checks(manifest)
    out = tmp_path / "figures"
    paths = inspect_figures(manifest, out, per_class=4, seed=1, report=report)
    assert_valid_pngs(paths, out)


def test_sample_grid_is_two_by_three_and_seeded(manifest, tmp_path):
    first = inspect_figures(manifest, tmp_path / "one", seed=3)
    second = inspect_figures(manifest, tmp_path / "two", seed=3)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    with Image.open(tmp_path / "one" / "sample_grid_COVID.png") as im:
        width, height = im.size
    assert width > height  # three columns, two rows
