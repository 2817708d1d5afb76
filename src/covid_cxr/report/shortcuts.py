"""The shortcut-check section: confounding, lungs hidden and border crop, per evaluated dataset."""

from __future__ import annotations

from covid_cxr.evaluation.shortcuts import label_source_confounding
from covid_cxr.report.evaluation import column_label
from covid_cxr.report.format import fmt, missing
from covid_cxr.report.run_files import Evaluation, RunFiles

SHORTCUT_TITLES = {
    "confounding": "Label × source confounding (training data)",
    "confounding_evaluated": "Label × source confounding (evaluated data)",
    "lungs_hidden": "Lungs hidden",
    "border_crop": "Border crop",
}


def shortcuts_section(files: RunFiles) -> dict:
    """Each evaluation's checks (a check that was skipped says so), or confounding from the manifest alone."""
    datasets = [_dataset(e) for e in files.evaluations]
    if not datasets:
        if files.manifest is None:
            return missing("no evaluation with shortcut checks and no manifest.csv")
        checks = [_shortcut("confounding", label_source_confounding(files.manifest))]
        note = "the lungs-hidden and border-crop checks were not run (run `covid-cxr evaluate` on the run)"
        datasets = [{"title": "training data", "checks": checks, "note": note}]
    return {"datasets": datasets}


def _dataset(evaluation: Evaluation) -> dict:
    """The checks of one evaluation, or a 'not run' note when it was evaluated without them."""
    shortcuts = evaluation.metrics.get("shortcuts")
    title = column_label(evaluation)
    if shortcuts is None:
        return {"title": title, "checks": [], "note": "not run for this dataset (--no-shortcut-checks)"}
    checks = [_shortcut(k, v) for k, v in shortcuts.items() if k in SHORTCUT_TITLES]
    masks = (shortcuts.get("lungs_hidden") or {}).get("lung_masks")
    note = ""
    if masks:
        note = "lung masks used for 'lungs hidden': " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in masks.items()
        )
    return {"title": title, "checks": checks, "note": note}


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
