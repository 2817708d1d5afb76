"""covid-cxr: chest X-ray classifiers for research (not for diagnosis)."""

__version__ = "0.1.0"
