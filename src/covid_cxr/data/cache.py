"""Cache of preprocessed uint8 images, keyed by the manifest rows and the spec, so nothing decodes twice."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from covid_cxr.data.images import load_image
from covid_cxr.data.preprocess import prepare
from covid_cxr.data.spec import Preprocess

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def default_cache_root() -> Path:
    """$COVID_CXR_CACHE, or ~/.cache/covid-cxr."""
    env = os.environ.get("COVID_CXR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "covid-cxr"


class ImageCache:
    """Preprocessed images as one `.npy` file per (manifest rows, spec), opened memory-mapped.

    Example:
        >>> cache = ImageCache(Path("cache"))
        >>> images = cache.load_or_build(manifest, Preprocess(size=224))  # (N, 224, 224, 3) uint8
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def key(self, manifest: pd.DataFrame, spec: Preprocess) -> str:
        """Hash of the rows' path and sha256, in order, and of the spec's image-changing fields."""
        digest = hashlib.sha256(spec.cache_key().encode())
        sha = manifest["sha256"] if "sha256" in manifest else pd.Series("", index=manifest.index)
        for path, file_hash in zip(manifest["path"].astype(str), sha.fillna("").astype(str), strict=True):
            digest.update(f"{path}\t{file_hash}\n".encode())
        return digest.hexdigest()[:32]

    def path(self, manifest: pd.DataFrame, spec: Preprocess) -> Path:
        """Where the array for this manifest and spec lives."""
        return self.root / f"{self.key(manifest, spec)}.npy"

    def load_or_build(
        self, manifest: pd.DataFrame, spec: Preprocess, progress: Progress | None = None, workers: int = 1
    ) -> np.ndarray:
        """Read-only memory map of uint8 (N, size, size, channels), decoding only on a cache miss.

        Unreadable images raise ImageError naming the file; a crash never leaves a partial cache file.
        """
        target = self.path(manifest, spec)
        shape = (len(manifest), spec.size, spec.size, spec.channels)
        cached = _open(target)
        if cached is not None and cached.shape == shape and cached.dtype == np.uint8:
            log.debug("cache hit %s", target)
            return cached
        if cached is not None:
            log.warning(
                "cache file %s holds %s %s, expected uint8 %s: rebuilding",
                target,
                cached.dtype,
                cached.shape,
                shape,
            )
        self._build(manifest["path"].astype(str).tolist(), spec, target, shape, progress, workers)
        return np.load(target, mmap_mode="r")

    def _build(
        self,
        paths: list[str],
        spec: Preprocess,
        target: Path,
        shape: tuple[int, ...],
        progress: Progress | None,
        workers: int,
    ) -> None:
        """Decode and prepare every image into a temporary .npy, then rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{target.stem}.", suffix=".npy.tmp")
        os.close(fd)
        log.info("building image cache %s for %d images", target, len(paths))
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for index, image in enumerate(_prepared(paths, spec, workers)):
                out[index] = image
                if progress is not None:
                    progress(index + 1, len(paths))
            out.flush()
            del out
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _open(path: Path) -> np.ndarray | None:
    """Memory-map an existing cache file; None when it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("cache file %s is unreadable (%s): rebuilding", path, exc)
        return None


def _prepared(paths: list[str], spec: Preprocess, workers: int):
    """Yield prepare(load_image(path)) in order, on `workers` threads (PIL and cv2 release the GIL)."""

    def one(path: str) -> np.ndarray:
        return prepare(load_image(path), spec)

    if workers <= 1:
        yield from map(one, paths)
        return
    chunk = workers * 8
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), chunk):
            yield from pool.map(one, paths[start : start + chunk])
