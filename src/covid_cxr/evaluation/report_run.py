"""What a run folder holds for the report, parsed once; unreadable files are named, never fatal."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from covid_cxr.bundle import BUNDLE_JSON
from covid_cxr.data.manifest import load_manifest
from covid_cxr.errors import CxrError
from covid_cxr.evaluation.evaluate import METRICS_JSON

log = logging.getLogger(__name__)

READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, yaml.YAMLError, CxrError)


@dataclass
class RunFiles:
    """What the run folder holds, parsed once; a file that is there but unreadable is named in `problems`."""

    run: Path
    evaluation: Path
    config_text: str | None = None
    config: dict | None = None
    manifest: pd.DataFrame | None = None
    checks: dict | None = None
    metrics: dict | None = None
    bundle: dict | None = None
    problems: list[str] = field(default_factory=list)


def read_run(run: Path, evaluation: Path) -> RunFiles:
    """Parse config.yaml, manifest.csv, checks.json, the evaluation's metrics.json and bundle.json."""
    files = RunFiles(run, evaluation)
    files.config_text = read_optional(files, run / "config.yaml", lambda p: p.read_text(encoding="utf-8"))
    if files.config_text is not None:
        files.config = read_optional(
            files, run / "config.yaml", lambda p: yaml.safe_load(p.read_text(encoding="utf-8"))
        )
    files.manifest = read_optional(files, run / "manifest.csv", load_manifest)
    files.checks = read_optional(files, run / "checks.json", read_json)
    files.metrics = read_optional(files, evaluation / METRICS_JSON, read_json)
    files.bundle = read_optional(files, run / "bundle" / BUNDLE_JSON, read_json)
    return files


def read_optional(files: RunFiles, path: Path, parse: Callable[[Path], Any]) -> Any:
    """parse(path), None when the file is absent; a parse failure is logged and named in files.problems."""
    if not path.is_file():
        return None
    try:
        return parse(path)
    except READ_ERRORS as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        files.problems.append(f"{path}: {exc}")
        return None


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))
