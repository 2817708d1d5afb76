"""Evaluation: metrics with bootstrap intervals, calibration, shortcut checks, figures and run comparison.

The submodules load lazily, so ``covid_cxr.evaluation.metrics`` needs no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covid_cxr.evaluation.compare import compare_runs, to_csv, to_markdown
    from covid_cxr.evaluation.evaluate import evaluate_run

__all__ = ["compare_runs", "evaluate_run", "to_csv", "to_markdown"]
_HOMES = {
    "compare_runs": "compare",
    "to_csv": "compare",
    "to_markdown": "compare",
    "evaluate_run": "evaluate",
}


def __getattr__(name: str) -> Any:
    """Import the public functions on first use."""
    if name in _HOMES:
        return getattr(import_module(f"covid_cxr.evaluation.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'covid_cxr.evaluation' has no attribute {name!r}")
