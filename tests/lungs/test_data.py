"""The lung-mask reader, the fixed split and the augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covid_cxr.errors import DataError
from covid_cxr.lungs.augment import augment
from covid_cxr.lungs.data import LungPairs, load_pairs, read_pairs, source_of, split_of


def test_folder_pairs_have_sources_and_a_fixed_split(pairs_dir: Path) -> None:
    frame = read_pairs(pairs_dir)
    assert len(frame) == 40
    assert set(frame["source"]) == {"ph"}
    assert frame["split"].tolist() == read_pairs(pairs_dir)["split"].tolist()
    counts = frame["split"].value_counts()
    assert set(counts.index) == {"train", "val", "test"}
    assert all(Path(m).name == Path(p).name for p, m in zip(frame["path"], frame["mask"], strict=True))


def test_csv_pairs_resolve_against_the_csv(pairs_dir: Path) -> None:
    names = sorted(p.name for p in (pairs_dir / "images").iterdir())[:3]
    rows = "\n".join(f"images/{n},masks/{n}" for n in names)
    (pairs_dir / "pairs.csv").write_text(f"path,mask\n{rows}\n")
    frame = read_pairs(pairs_dir / "pairs.csv")
    assert frame["path"].tolist() == [str(pairs_dir / "images" / n) for n in names]
    images, masks = load_pairs(frame, 32)
    assert images.shape == (3, 32, 32) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}


def test_missing_mask_and_bad_csv_are_named(pairs_dir: Path) -> None:
    (pairs_dir / "masks" / "PH_000.png").unlink()
    with pytest.raises(DataError, match="PH_000.png"):
        read_pairs(pairs_dir)
    (pairs_dir / "bad.csv").write_text("image,label\na.png,1\n")
    with pytest.raises(DataError, match="path and mask"):
        read_pairs(pairs_dir / "bad.csv")


def test_nlm_sources_and_split_shares() -> None:
    assert source_of("MCUCXR_0001_0") == "montgomery"
    assert source_of("CHNCXR_0001_1") == "shenzhen"
    splits = [split_of(f"CHNCXR_{i:04d}_0") for i in range(1000)]
    assert 0.15 < splits.count("test") / 1000 < 0.25
    assert 0.06 < splits.count("val") / 1000 < 0.14


def test_augment_moves_mask_with_image_and_keeps_types(pairs_dir: Path) -> None:
    images, masks = load_pairs(read_pairs(pairs_dir), 64)
    rng = np.random.default_rng(1)
    changed = 0
    for image, mask in zip(images[:10], masks[:10], strict=True):
        out, out_mask = augment(image, mask, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out_mask.shape == mask.shape and set(np.unique(out_mask)) <= {0, 1}
        changed += int(not np.array_equal(out_mask, mask))
    assert changed >= 8


def test_dataset_yields_normalised_inputs(pairs_dir: Path) -> None:
    images, masks = load_pairs(read_pairs(pairs_dir), 64)
    x, y = LungPairs(images, masks, 48, train=True)[0]
    assert x.shape == (3, 48, 48) and y.shape == (1, 48, 48)
    assert x.min() < -1 and x.max() > 1
