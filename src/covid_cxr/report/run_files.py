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

from covid_cxr.bundle_info import BUNDLE_JSON
from covid_cxr.data.manifest import load_manifest
from covid_cxr.errors import CxrError
from covid_cxr.run_dir import GALLERY_JSON, METRICS_JSON, RunDir

log = logging.getLogger(__name__)

READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, yaml.YAMLError, CxrError)


@dataclass
class Evaluation:
    """One evaluation folder: the run's test split or an external dataset."""

    folder: Path
    metrics: dict
    gallery: dict | None = None

    @property
    def name(self) -> str:
        """The dataset's name ('test' for the run's own test split)."""
        return str(self.metrics.get("dataset", {}).get("name", self.folder.name))

    @property
    def external(self) -> bool:
        """True for a dataset other than the run's test split."""
        return bool(self.metrics.get("dataset", {}).get("external", self.name != "test"))


@dataclass
class RunFiles:
    """What the run folder holds, parsed once; a file that is there but unreadable is named in `problems`."""

    run: Path
    config_text: str | None = None
    config: dict | None = None
    manifest: pd.DataFrame | None = None
    checks: dict | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    bundle: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def paths(self) -> RunDir:
        """The run folder's paths."""
        return RunDir(self.run)

    @property
    def internal(self) -> Evaluation | None:
        """The evaluation on the run's own test split, when there is one."""
        return next((e for e in self.evaluations if not e.external), None)


def read_run(run: Path, evaluations: list[Path] | None = None) -> RunFiles:
    """Parse config.yaml, manifest.csv, checks.json, bundle.json and every evaluation folder's files."""
    paths = RunDir(run)
    files = RunFiles(run)
    files.config_text = read_optional(files, paths.config, lambda p: p.read_text(encoding="utf-8"))
    if files.config_text is not None:
        files.config = read_optional(
            files, paths.config, lambda p: yaml.safe_load(p.read_text(encoding="utf-8"))
        )
    files.manifest = read_optional(files, paths.manifest, load_manifest)
    files.checks = read_optional(files, paths.checks, read_json)
    files.bundle = read_optional(files, paths.bundle / BUNDLE_JSON, read_json)
    for folder in paths.evaluations() if evaluations is None else evaluations:
        metrics = read_optional(files, folder / METRICS_JSON, read_json)
        if metrics is not None:
            gallery = read_optional(files, folder / GALLERY_JSON, read_json)
            files.evaluations.append(Evaluation(folder, metrics, gallery))
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
