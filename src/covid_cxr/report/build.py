"""The self-contained HTML report of a run: checks, splits, training, evaluation, Grad-CAM, model card.

Everything is embedded (figures and overlays as base64 PNG data URIs, CSS inline, no scripts, no
fonts), so ``report.html`` opens offline and can be archived or mailed as one file. Pieces a run
never produced (no evaluation yet, no LR finder, no bundle) are shown as "not run". Each section is
built in its own ``report_*`` module; this one reads the run, assembles them and renders the page.

Example:
    >>> build_report("runs/demo")  # writes runs/demo/report.html
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from covid_cxr import __version__
from covid_cxr.io import atomic_write_text
from covid_cxr.report.card import model_card
from covid_cxr.report.checks import checks_section, splits_section
from covid_cxr.report.evaluation import at_a_glance, evaluation_section
from covid_cxr.report.format import missing
from covid_cxr.report.gallery import gallery_section
from covid_cxr.report.generalisation import generalisation_section
from covid_cxr.report.run_files import READ_ERRORS, RunFiles, read_run
from covid_cxr.report.shortcuts import shortcuts_section
from covid_cxr.report.training import config_section, training_section
from covid_cxr.run_dir import RunDir, RunError

__all__ = [
    "NOTICE",
    "SECTIONS",
    "RunFiles",
    "build_report",
    "read_run",
    "render",
    "report_context",
]

log = logging.getLogger(__name__)

NOTICE = "Research use only — not for diagnosis"
SECTIONS = {  # section id -> heading, in page order
    "config": "Configuration",
    "checks": "Data checks",
    "splits": "Splits and leakage",
    "training": "Training",
    "evaluation": "Evaluations",
    "gallery": "Grad-CAM gallery",
    "shortcuts": "Shortcut checks",
    "generalisation": "Will this hold at another hospital?",
    "model_card": "Model card",
}


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's one self-contained report (default ``run_dir/report.html``) atomically; its path.

    The page holds every evaluation the run folder has (its test split and each external dataset).
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunError(f"{run.root}: run not found")
    files = read_run(run.root)
    target = Path(out) if out is not None else run.report
    atomic_write_text(target, render(report_context(files)))
    log.info("wrote report %s", target)
    return target


def report_context(files: RunFiles) -> dict[str, Any]:
    """Everything the template shows: the header and one dict per section (``missing`` when not run)."""
    builders: dict[str, Callable[[], dict]] = {
        "config": lambda: config_section(files),
        "checks": lambda: checks_section(files),
        "splits": lambda: splits_section(files),
        "training": lambda: training_section(files),
        "evaluation": lambda: evaluation_section(files),
        "gallery": lambda: gallery_section(files),
        "shortcuts": lambda: shortcuts_section(files),
        "generalisation": lambda: generalisation_section(files),
        "model_card": lambda: model_card(files),
    }
    sections = {key: _guarded(key, build) for key, build in builders.items()}
    return {
        "title": (files.config or {}).get("name") or files.run.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(files.run),
        "run_created": (files.bundle or {}).get("created"),
        "version": __version__,
        "notice": NOTICE,
        "problems": files.problems,
        "glance": _guarded("at a glance", lambda: at_a_glance(files), []),
        "headings": SECTIONS,
        "sections": sections,
    }


def render(context: dict[str, Any]) -> str:
    """The report HTML from its context (jinja2, every value autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("covid_cxr.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context)


def _guarded(key: str, build: Callable[[], Any], fallback: Any = None) -> Any:
    """build(), or `fallback` (default: a 'could not be built' section) when the files are malformed.

    The report never fails on one section: the error is logged and shown in its place.
    """
    try:
        return build()
    except READ_ERRORS as exc:
        log.warning("report: %s failed: %s", key, exc, exc_info=True)
        return missing(f"could not be built: {type(exc).__name__}: {exc}") if fallback is None else fallback
