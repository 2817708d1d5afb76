"""The shipped weights: small, SHA-256 checked, Dice >= 0.95 per source on the held-out lungs-256 split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from covid_cxr.cli import app
from covid_cxr.data.images import load_image
from covid_cxr.errors import ConfigError
from covid_cxr.lungs import lung_stats, segment, segmenter
from covid_cxr.lungs.data import read_pairs
from covid_cxr.lungs.segmenter import WEIGHTS_FILE, load_segmenter
from covid_cxr.lungs.train import evaluate_pairs

WEIGHTS = Path(segmenter.__file__).parent / "weights" / WEIGHTS_FILE


def test_weights_are_at_most_1_mb_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WEIGHTS.stat().st_size <= 1_000_000
    assert load_segmenter().size > 0
    monkeypatch.setattr(segmenter, "WEIGHTS_SHA256", "0" * 64)
    load_segmenter.cache_clear()
    try:
        with pytest.raises(ConfigError, match="SHA-256"):
            load_segmenter()
    finally:
        monkeypatch.undo()
        load_segmenter.cache_clear()


def test_held_out_dice_per_source(shared_data: Path) -> None:
    pairs = read_pairs(shared_data / "lungs-256")
    figures = evaluate_pairs(load_segmenter(), pairs[pairs["split"] == "test"])
    assert set(figures["per_source"]) == {"montgomery", "shenzhen"}
    for source, row in figures["per_source"].items():
        assert row["dice"] >= 0.95, (source, row)


def test_segment_keeps_the_input_size_and_finds_two_lungs(shared_data: Path) -> None:
    image = load_image(next(iter(sorted((shared_data / "radiography-224" / "Normal").iterdir()))))
    wide = np.ascontiguousarray(np.pad(image, ((0, 0), (30, 30)), mode="edge"))
    mask = segmenter.load_segmenter()(wide)
    assert mask.shape == wide.shape[:2] and mask.dtype == np.uint8
    assert lung_stats(mask).quality == "ok"
    assert segment(wide).sum() == mask.sum()


def test_predict_cli_writes_masks_overlays_and_json(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "figure1" / "images"
    files = sorted(folder.iterdir())[:2]
    result = CliRunner().invoke(
        app, ["lungs", "predict", *map(str, files), "--out", str(tmp_path), "--overlay", "--json"]
    )
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [Path(i["path"]).name for i in items] == [f.name for f in files]
    for item, file in zip(items, files, strict=True):
        mask = load_image(tmp_path / f"{file.stem}.png")
        assert mask.shape == load_image(file).shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert abs(item["area_fraction"] - (mask > 0).mean()) < 1e-3
        assert load_image(item["overlay"]).shape[2] == 3
        assert {"components", "quality"} <= set(item)


def test_lungs_check_lists_implausible_images(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "radiography-224" / "COVID").iterdir())[:3]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(blank)
    csv = tmp_path / "m.csv"
    pd.DataFrame({"path": [*map(str, files), str(blank)], "label": ["covid"] * 4}).to_csv(csv, index=False)
    result = CliRunner().invoke(app, ["lungs", "check", str(csv), "--json"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert rows["blank.png"]["quality"] != "ok"
    assert sum(r["quality"] == "ok" for r in rows.values()) >= 2


def test_data_check_with_lungs_reports_each_image(shared_data: Path, tmp_path: Path) -> None:
    for label in ("COVID", "Normal"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for file in sorted((shared_data / "radiography-224" / label).iterdir())[:3]:
            (tmp_path / "data" / label / file.name).symlink_to(file)
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "data" / "Normal" / "blank.png")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "data"), "--lungs", "--json"])
    assert result.exit_code == 0, result.output
    lungs = {Path(r["path"]).name: r for r in json.loads(result.stdout)["lungs"]}
    assert len(lungs) == 7
    assert lungs["blank.png"]["quality"] != "ok"
    assert sum(r["quality"] == "ok" for r in lungs.values()) == 6
    assert all(0 <= r["area_fraction"] <= 1 and r["components"] >= 0 for r in lungs.values())


def test_onnx_runtime_and_torch_give_the_same_masks(shared_data: Path) -> None:
    from covid_cxr.lungs.segmenter import LungSegmenter

    shipped = load_segmenter()
    assert shipped.session is not None  # the gate's lung check runs on ONNX Runtime
    eager = LungSegmenter(shipped.net, shipped.size)
    for path in sorted((shared_data / "lungs-256" / "images").iterdir())[::100]:
        image = load_image(path)
        assert (shipped(image) != eager(image)).mean() < 1e-3


def test_the_first_segmentations_may_arrive_on_several_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    image = np.zeros((128, 128), np.uint8)
    load_segmenter.cache_clear()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            masks = list(pool.map(lambda _: segment(image), range(4)))
    finally:
        load_segmenter.cache_clear()
    assert all(mask.shape == (128, 128) for mask in masks)
