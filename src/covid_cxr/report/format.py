"""Table cells and "not run" sections of the HTML report: fixed decimals, ranges, 95 % intervals."""

from __future__ import annotations

from typing import Any

import numpy as np


def missing(reason: str) -> dict:
    """A section shown as 'not run' with the reason."""
    return {"missing": reason}


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: '–' for missing values, fixed decimals for floats."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def span(low: int, high: int) -> str:
    """'low–high', or one number when they are equal."""
    return str(low) if low == high else f"{low}–{high}"


def interval(ci: dict | None) -> str:
    """'lower–upper' of a bootstrap interval, '–' when none."""
    if not ci or ci.get("lower") is None:
        return "–"
    return f"{fmt(ci['lower'])}–{fmt(ci['upper'])}"


def with_ci(value: float | None, ci: dict | None) -> str:
    """'value (lower–upper)', or the value alone without an interval."""
    text = fmt(value)
    return text if not ci or ci.get("lower") is None else f"{text} ({interval(ci)})"
