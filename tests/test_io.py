"""Atomic writes: content lands whole, permissions follow the umask, no temp files stay behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from covid_cxr.io import atomic_replace_dir, atomic_write_bytes, atomic_write_text


def test_atomic_write_text_replaces_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_replace_dir_swaps_folders(tmp_path: Path) -> None:
    final = tmp_path / "bundle"
    for text in ("v1", "v2"):
        tmp = tmp_path / f".tmp-{text}"
        tmp.mkdir()
        (tmp / "x").write_text(text)
        atomic_replace_dir(tmp, final)
    assert (final / "x").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
