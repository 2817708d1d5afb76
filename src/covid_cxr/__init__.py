"""covid-cxr: chest X-ray classifiers for research (not for diagnosis)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_bundle"]

if TYPE_CHECKING:
    from covid_cxr.bundle import load_bundle


def __getattr__(name: str) -> Any:
    """Import load_bundle lazily so that `import covid_cxr` stays light (no torch)."""
    if name == "load_bundle":
        from covid_cxr.bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'covid_cxr' has no attribute {name!r}")
