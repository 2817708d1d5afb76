"""Image cache: built once, memory-mapped, keyed by rows and spec, atomic, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_cxr.data.cache import ImageCache, default_cache_root
from covid_cxr.data.images import load_image
from covid_cxr.data.manifest import make_manifest
from covid_cxr.data.preprocess import prepare
from covid_cxr.data.spec import Preprocess
from covid_cxr.errors import ImageError

SPEC = Preprocess(size=32, channels=3, white_balance=0.5)


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    """Six small images of different sizes, grey PNGs and RGB JPEGs, in two classes."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        shape = (40 + 4 * i, 36) if i % 2 else (30, 50, 3)
        path = tmp_path / "images" / f"{'ab'[i % 2]}{i}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        rows.append({"path": path, "label": "ab"[i % 2]})
    return make_manifest(rows, "test")


def expected(manifest: pd.DataFrame, spec: Preprocess) -> np.ndarray:
    """What the cache should hold: prepare(load_image(path)) per row, in order."""
    return np.stack([prepare(load_image(p), spec) for p in manifest["path"]])


def test_build_then_hit_without_decoding(manifest: pd.DataFrame, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    calls: list[tuple[int, int]] = []
    images = cache.load_or_build(manifest, SPEC, progress=lambda done, total: calls.append((done, total)))
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(images, expected(manifest, SPEC))
    assert calls == [(i, 6) for i in range(1, 7)]
    reference = np.array(images)
    for path in manifest["path"]:
        Path(path).unlink()  # a second build would now fail
    calls.clear()
    again = ImageCache(tmp_path / "cache").load_or_build(manifest, SPEC, progress=lambda *a: calls.append(a))
    np.testing.assert_array_equal(again, reference)
    assert calls == []
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{cache.key(manifest, SPEC)}.npy"]


def test_threads_give_the_same_array(manifest: pd.DataFrame, tmp_path: Path) -> None:
    spec = Preprocess(size=24, channels=1, keep_aspect=True)
    threaded = ImageCache(tmp_path / "a").load_or_build(manifest, spec, workers=3)
    np.testing.assert_array_equal(threaded, expected(manifest, spec))


def test_key_follows_rows_order_and_image_fields_only(manifest: pd.DataFrame, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    key = cache.key(manifest, SPEC)
    assert key == ImageCache(tmp_path / "other").key(manifest.copy(), SPEC.model_copy())
    assert key != cache.key(manifest.iloc[::-1], SPEC)
    assert key != cache.key(manifest.iloc[:5], SPEC)
    assert key != cache.key(manifest.assign(sha256="0" * 64), SPEC)
    assert key != cache.key(manifest, SPEC.model_copy(update={"size": 33}))
    assert key == cache.key(manifest, SPEC.model_copy(update={"normalize": "imagenet"}))


def test_unreadable_image_names_the_file_and_leaves_no_cache(manifest: pd.DataFrame, tmp_path: Path) -> None:
    broken = Path(manifest.loc[3, "path"])
    broken.write_bytes(broken.read_bytes()[:40])
    root = tmp_path / "cache"
    with pytest.raises(ImageError) as info:
        ImageCache(root).load_or_build(manifest, SPEC)
    assert info.value.path == str(broken)
    assert list(root.iterdir()) == []


def test_corrupt_cache_file_is_rebuilt(manifest: pd.DataFrame, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    target = cache.path(manifest, SPEC)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(cache.load_or_build(manifest, SPEC), expected(manifest, SPEC))


def test_default_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVID_CXR_CACHE", str(tmp_path / "env-cache"))
    assert ImageCache().root == tmp_path / "env-cache"
    monkeypatch.delenv("COVID_CXR_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "covid-cxr"
