"""RunDir: every path of a run folder, in one place.

A run folder (``runs/<name>/``) holds what ``train`` wrote (``config.yaml``, ``manifest.csv``,
``checks.json``, ``checkpoints/``, ``logs/``, ``metrics.csv``, ``curves.png``, ``test_metrics.json``,
``bundle/``) and what later stages add: one evaluation folder per dataset (``evaluation/`` for the
run's own test split, ``evaluation-<dataset>/`` for each external one), ``explanations/`` and
``report.html``. Stages hand each other these paths, never string literals.

Example:
    >>> run = RunDir("runs/demo")
    >>> run.evaluation("kermany-224")
    PosixPath('runs/demo/evaluation-kermany-224')
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from covid_cxr.errors import CxrError

TEST = "test"  # the name of the run's own test split among its evaluations
EVALUATION_PREFIX = "evaluation"
METRICS_JSON = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
GALLERY_JSON = "gallery.json"


class RunError(CxrError):
    """A run folder is missing, incomplete, or would be overwritten without being asked."""


def dataset_slug(name: str) -> str:
    """A folder-safe name for a dataset (letters, digits, '.', '_' and '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "data"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder; nothing is created until a stage writes."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def name(self) -> str:
        """The run's folder name (the default run name)."""
        return self.root.resolve().name

    config = property(lambda self: self.root / "config.yaml", doc="the fully resolved run config")
    manifest = property(lambda self: self.root / "manifest.csv", doc="the manifest with splits")
    checks = property(lambda self: self.root / "checks.json", doc="the data checks before training")
    checkpoints = property(lambda self: self.root / "checkpoints", doc="best.ckpt and last.ckpt")
    best_checkpoint = property(lambda self: self.checkpoints / "best.ckpt")
    last_checkpoint = property(lambda self: self.checkpoints / "last.ckpt")
    logs = property(lambda self: self.root / "logs", doc="Lightning's CSV logs")
    metrics_csv = property(lambda self: self.root / "metrics.csv", doc="one row per epoch")
    curves = property(lambda self: self.root / "curves.png", doc="training curves")
    test_metrics = property(lambda self: self.root / "test_metrics.json", doc="loss/accuracy after training")
    bundle = property(lambda self: self.root / "bundle", doc="the deployable bundle folder")
    explanations = property(lambda self: self.root / "explanations", doc="explain's default output")
    report = property(lambda self: self.root / "report.html", doc="the run's one report page")
    cv_metrics = property(lambda self: self.root / "cv_metrics.json", doc="k-fold summary")

    def fold(self, i: int) -> RunDir:
        """The run folder of fold `i` of a k-fold run."""
        return RunDir(self.root / f"fold-{i}")

    def evaluation(self, dataset: str = TEST) -> Path:
        """One dataset's evaluation folder: ``evaluation/`` (test split) or ``evaluation-<name>/``."""
        if dataset == TEST:
            return self.root / EVALUATION_PREFIX
        return self.root / f"{EVALUATION_PREFIX}-{dataset_slug(dataset)}"

    def evaluations(self) -> list[Path]:
        """Every evaluation folder holding a metrics.json: the test split first, then the others by name."""
        found = [p for p in self.root.glob(f"{EVALUATION_PREFIX}*") if (p / METRICS_JSON).is_file()]
        internal = self.evaluation()
        return sorted(found, key=lambda p: (p != internal, p.name))

    def holds_run(self) -> list[str]:
        """The names of the run outputs already in the folder (empty for a new or empty folder)."""
        outputs = [
            self.config,
            self.manifest,
            self.checks,
            self.checkpoints,
            self.metrics_csv,
            self.bundle,
            self.cv_metrics,
        ]
        return [p.name for p in outputs if p.exists()]

    def clear(self) -> None:
        """Remove what covid-cxr wrote into the folder (the user's own files stay); for --overwrite."""
        written = {p.name for p in self._outputs()}
        for path in self.root.iterdir() if self.root.is_dir() else ():
            if path.name in written or path.name.startswith((EVALUATION_PREFIX, "fold-")):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _outputs(self) -> list[Path]:
        """Every fixed-name path a stage writes."""
        return [
            self.config,
            self.manifest,
            self.checks,
            self.checkpoints,
            self.logs,
            self.metrics_csv,
            self.curves,
            self.test_metrics,
            self.bundle,
            self.explanations,
            self.report,
            self.cv_metrics,
        ]

    def require(self, *what: Path) -> RunDir:
        """This run, or RunError when the folder or one of `what` (default: the manifest) is missing."""
        if not self.root.is_dir():
            raise RunError(f"{self.root}: run not found")
        for path in what or (self.manifest,):
            if not path.exists():
                raise RunError(f"{path}: missing; is {self.root} a run folder written by covid-cxr train?")
        return self
