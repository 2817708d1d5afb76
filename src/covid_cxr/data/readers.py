"""Dataset readers: one registry of named readers, auto-detection, and read_source as the entry point.

Every reader returns ReadResult(manifest, problems, counts): every usable image file is in the
manifest (its size (0, 0) when the header is unreadable); metadata issues are problems, never dropped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path

from covid_cxr.data.manifest import ReadResult
from covid_cxr.data.readers_common import require_dir
from covid_cxr.data.readers_csv import has_manifest, read_csv_manifest
from covid_cxr.data.readers_folder import is_kermany, read_folder, read_kermany
from covid_cxr.data.readers_ieee8023 import METADATA, read_ieee8023
from covid_cxr.data.readers_radiography import is_radiography, read_radiography
from covid_cxr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Reader = Callable[..., ReadResult]

READERS: dict[str, Reader] = {
    "folder": read_folder,
    "radiography": read_radiography,
    "ieee8023": read_ieee8023,
    "kermany": read_kermany,
    "csv": read_csv_manifest,
}


def detect_reader(source: str | Path) -> str:
    """The reader name auto-detection picks for a source path."""
    path = Path(source).expanduser()
    if path.suffix.lower() == ".csv" and path.is_file():
        return "csv"
    root = require_dir(path)
    if has_manifest(root):
        return "csv"
    if (root / METADATA).is_file():
        return "ieee8023"
    if is_kermany(root):
        return "kermany"
    if is_radiography(root):
        return "radiography"
    return "folder"


def read_source(source: str | Path, /, reader: str = "auto", **options: object) -> ReadResult:
    """Read a data source with the named reader (or the detected one) and its options."""
    name = detect_reader(source) if reader == "auto" else reader
    if name not in READERS:
        raise ConfigError(f"unknown reader {reader!r}; choose one of: auto, {', '.join(READERS)}")
    _check_options(name, options)
    if not Path(source).expanduser().exists():
        raise DataError(f"data source not found: {source}")
    result = READERS[name](source, **options)
    log.info(
        "read %d images from %s with the %s reader (%d problems)",
        len(result.manifest),
        source,
        name,
        len(result.problems),
    )
    return result


def reader_options(name: str) -> list[str]:
    """The option names a reader accepts."""
    params = inspect.signature(READERS[name]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _check_options(name: str, options: dict) -> None:
    """ConfigError naming the options a reader does not accept, and the ones it does."""
    unknown = sorted(set(options) - set(reader_options(name)))
    if unknown:
        valid = ", ".join(reader_options(name))
        raise ConfigError(f"reader {name!r} has no option {', '.join(unknown)}; its options: {valid}")
