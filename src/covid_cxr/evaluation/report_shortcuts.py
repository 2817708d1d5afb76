"""The shortcut-check section of the report: confounding, lungs hidden and border crop verdicts."""

from __future__ import annotations

from covid_cxr.evaluation.report_format import fmt, missing
from covid_cxr.evaluation.report_run import RunFiles
from covid_cxr.evaluation.shortcuts import label_source_confounding

SHORTCUT_TITLES = {
    "confounding": "Label × source confounding (training data)",
    "confounding_evaluated": "Label × source confounding (evaluated data)",
    "lungs_hidden": "Lungs hidden",
    "border_crop": "Border crop",
}


def shortcuts_section(files: RunFiles) -> dict:
    """The evaluation's shortcut checks, or at least label × source confounding from the manifest."""
    shortcuts = (files.metrics or {}).get("shortcuts")
    if shortcuts is None:
        if files.manifest is None:
            return missing("no evaluation with shortcut checks and no manifest.csv")
        checks = {"confounding": label_source_confounding(files.manifest)}
        note = "the lungs-hidden and border-crop checks were not run (run `covid-cxr evaluate` on the run)"
    else:
        checks, note = {k: v for k, v in shortcuts.items() if k in SHORTCUT_TITLES}, ""
    return {"checks": [_shortcut(key, check) for key, check in checks.items()], "note": note}


def _shortcut(key: str, check: dict) -> dict:
    """Title, status word (OK/CAUTION/FLAG/SKIP), verdict and a few numbers of one shortcut check."""
    verdict = str(check.get("verdict", ""))
    status = verdict.split(":", 1)[0] if ":" in verdict else "?"
    return {
        "title": SHORTCUT_TITLES.get(key, key),
        "status": status,
        "verdict": verdict,
        "auc": _shortcut_aucs(check),
    }


def _shortcut_aucs(check: dict) -> dict | None:
    """Per-class ROC AUC on the full and on the altered images (lungs hidden or border cropped)."""
    altered = "auc_hidden" if "auc_hidden" in check else "auc_cropped" if "auc_cropped" in check else None
    if altered is None:
        return None
    name = "lungs hidden" if altered == "auc_hidden" else "border cropped"
    full = check.get("auc_full", {})
    return {
        "header": ["class", "ROC AUC, full image", f"ROC AUC, {name}"],
        "rows": [[cls, fmt(full.get(cls)), fmt(value)] for cls, value in check[altered].items()],
    }
