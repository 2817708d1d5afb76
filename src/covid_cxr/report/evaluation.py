"""The evaluation section (every dataset side by side, then each in detail) and the at-a-glance header."""

from __future__ import annotations

from covid_cxr.report.format import fmt, interval, missing, with_ci
from covid_cxr.report.images import evaluation_figures
from covid_cxr.report.reliability import reliability_line, reliability_rows
from covid_cxr.report.run_files import Evaluation, RunFiles

HEADLINE = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "macro_auc": "Macro ROC AUC",
    "micro_auc": "Micro ROC AUC",
}
SIDE_BY_SIDE = ("accuracy", "balanced_accuracy", "macro_auc")


def evaluation_section(files: RunFiles) -> dict:
    """The side-by-side table of every evaluation and one detailed block per evaluation."""
    if not files.evaluations:
        return missing("no evaluation yet (run `covid-cxr evaluate` on the run, and with --data for others)")
    return {
        "side_by_side": side_by_side(files.evaluations),
        "reliability": [reliability_line(e, column_label(e)) for e in files.evaluations],
        "evaluations": [_details(e) for e in files.evaluations],
    }


def side_by_side(evaluations: list[Evaluation]) -> dict:
    """Rows of metrics, one column per evaluation: n, accuracy, balanced accuracy, per-class, AUC, ECE,
    then conformal coverage, set size, OOD flag and abstain rates."""
    header = ["metric", *(column_label(e) for e in evaluations)]
    rows = [["images evaluated", *(str(e.metrics["dataset"]["n_evaluated"]) for e in evaluations)]]
    for key in SIDE_BY_SIDE:
        rows.append(
            [HEADLINE[key], *(_cell(e, key, e.metrics["metrics"]["headline"].get(key)) for e in evaluations)]
        )
    classes = list(dict.fromkeys(c for e in evaluations for c in e.metrics["metrics"]["classes"]))
    for cls in classes:
        for measure in ("sensitivity", "specificity"):
            rows.append([f"{measure} {cls}", *(_class_cell(e, cls, measure) for e in evaluations)])
    rows.append(
        ["ECE (15 bins)", *(_cell(e, "ece", e.metrics["calibration"]["ece_after"]) for e in evaluations)]
    )
    rows.extend(reliability_rows(evaluations))
    rows.append(["shortcut flags", *(shortcut_summary(e) for e in evaluations)])
    return {"header": header, "rows": rows}


def at_a_glance(files: RunFiles) -> list[tuple[str, str]]:
    """The header's figures: acquisition cues, accuracy and macro AUC per evaluation, the shortcut flags."""
    acquisition = (files.checks or {}).get("acquisition")
    rows = []
    if acquisition:
        flagged = ", ".join(f"{f['label']} (AUC {f['auc']:.2f})" for f in acquisition.get("flagged", []))
        rows.append(
            ("Acquisition cues", f"FLAG {flagged}" if flagged else str(acquisition["verdict"]).split(":")[0])
        )
    if not files.evaluations:
        return [*rows, ("Evaluation", "not run")]
    for e in files.evaluations:
        head = e.metrics["metrics"]["headline"]
        rows.append(
            (
                f"{column_label(e)} · {e.metrics['dataset']['n_evaluated']} images",
                f"accuracy {_cell(e, 'accuracy', head.get('accuracy'))}, "
                f"macro AUC {_cell(e, 'macro_auc', head.get('macro_auc'))}",
            )
        )
    flags = [f"{column_label(e)}: {shortcut_summary(e)}" for e in files.evaluations]
    return [*rows, ("Shortcut flags", " · ".join(flags))]


def shortcut_summary(evaluation: Evaluation) -> str:
    """'not run', 'none of 3 checks', or the flagged checks' names; skipped checks are said to be skipped."""
    shortcuts = evaluation.metrics.get("shortcuts")
    if shortcuts is None:
        return "not run"
    checks = {k: v for k, v in shortcuts.items() if isinstance(v, dict) and "verdict" in v}
    flagged = [k.replace("_", " ") for k, v in checks.items() if v.get("flag")]
    skipped = [k for k, v in checks.items() if str(v["verdict"]).startswith("SKIP")]
    if len(skipped) == len(checks):
        return f"all {len(checks)} skipped"
    ran = len(checks) - len(skipped)
    text = f"FLAG {', '.join(flagged)}" if flagged else f"none flagged of {ran} run"
    return f"{text}; {len(skipped)} skipped" if skipped else text


def with_interval(evaluation: Evaluation, key: str) -> str:
    """A headline metric of an evaluation with its interval."""
    return _cell(evaluation, key, evaluation.metrics["metrics"]["headline"].get(key))


def headline_rows(headline: dict, intervals: dict) -> list[tuple[str, str, str]]:
    """(name, value, 95 % interval) of the headline figures."""
    return [
        (name, fmt(headline.get(key)), interval(intervals.get(key)))
        for key, name in HEADLINE.items()
        if key in headline
    ]


def column_label(evaluation: Evaluation) -> str:
    """The column name of an evaluation: 'test split' or the external dataset's name."""
    return f"external: {evaluation.name}" if evaluation.external else "test split"


def _intervals(evaluation: Evaluation) -> dict:
    """The evaluation's interval values by metric name ({} without intervals)."""
    return (evaluation.metrics.get("intervals") or {}).get("values", {})


def _cell(evaluation: Evaluation, key: str, value: float | None) -> str:
    """'value (lower–upper)' of one metric of one evaluation."""
    return with_ci(value, _intervals(evaluation).get(key))


def _class_cell(evaluation: Evaluation, cls: str, measure: str) -> str:
    """Per-class sensitivity or specificity with its interval; 'no images' for a class the data lacks."""
    per_class = evaluation.metrics["metrics"]["per_class"].get(cls)
    if per_class is None:
        return "–"
    if measure == "sensitivity" and not per_class.get("support"):
        return "no images"
    return _cell(evaluation, f"{measure}[{cls}]", per_class.get(measure))


def _details(evaluation: Evaluation) -> dict:
    """Headline metrics with intervals, per-class and per-source tables, calibration and figures."""
    e = evaluation.metrics
    d = e["dataset"]
    intervals = _intervals(evaluation)
    excluded = d.get("excluded") or {}
    return {
        "title": f"{column_label(evaluation)}",
        "anchor": f"evaluation-{evaluation.folder.name}",
        "dataset": [
            ("Data", str(d["source"])),
            ("Images evaluated", d["n_evaluated"]),
            ("Images per class", ", ".join(f"{k}: {v}" for k, v in (d.get("classes") or {}).items()) or "–"),
            (
                "Class matching",
                ", ".join(f"{k} → {v}" for k, v in d.get("class_matching", {}).items()) or "–",
            ),
            (
                "Left out (classes the model does not know)",
                ", ".join(f"{k}: {v}" for k, v in excluded.items()) or "none",
            ),
            ("Unreadable", len(d.get("unreadable", []))),
            ("Image-list fingerprint (SHA-256)", d.get("fingerprint", "–")),
            ("Bootstrap resamples", (e.get("intervals") or {}).get("n_resamples", "not run")),
        ],
        "headline": headline_rows(e["metrics"]["headline"], intervals),
        "per_class_header": [
            "class",
            "support",
            "precision",
            "sensitivity (95 % CI)",
            "specificity (95 % CI)",
            "F1",
            "ROC AUC",
            "AP",
        ],
        "per_class": _per_class_rows(e["metrics"], intervals),
        "calibration": _calibration_rows(e["calibration"], e.get("temperature", {})),
        "per_source": _per_source_rows(e.get("per_source")),
        "cam_in_lungs": _cam_in_lungs_rows(e.get("cam_in_lungs")),
        "figures": evaluation_figures(evaluation.folder),
        "report_text": e["metrics"].get("report_text", ""),
    }


def _per_class_rows(metrics: dict, intervals: dict) -> list[list[str]]:
    """Per class: support, precision, sensitivity and specificity with intervals, F1, ROC AUC, AP."""
    rows = []
    for cls in metrics["classes"]:
        pc, rep = metrics["per_class"][cls], metrics["report"].get(cls, {})
        rows.append(
            [
                cls,
                str(pc["support"]),
                fmt(rep.get("precision")),
                with_ci(pc["sensitivity"], intervals.get(f"sensitivity[{cls}]")),
                with_ci(pc["specificity"], intervals.get(f"specificity[{cls}]")),
                fmt(rep.get("f1")),
                fmt(pc["roc_auc"]),
                fmt(pc["average_precision"]),
            ]
        )
    return rows


def _calibration_rows(cal: dict, temperature: dict) -> list[tuple[str, str]]:
    """The bundle's temperature (and how the calibration step chose it), ECE and NLL at T = 1 and at T."""
    record = temperature.get("calibration") or {}
    how = record.get("reason") or "no calibration step recorded in the bundle"
    if record.get("fitted_temperature") is not None:
        fitted, n = record["fitted_temperature"], record.get("n_val", "?")
        how = f"fitted T = {fitted:.3f} on {n} validation images, {how}"
    return [
        ("Temperature T (from the bundle)", f"{cal['temperature']:.3f} ({how})"),
        (f"ECE, {cal['n_bins']} bins (T = 1 → T)", f"{fmt(cal['ece_before'])} → {fmt(cal['ece_after'])}"),
        ("Negative log-likelihood (T = 1 → T)", f"{fmt(cal['nll_before'])} → {fmt(cal['nll_after'])}"),
    ]


def _cam_in_lungs_rows(share: dict | None) -> dict | None:
    """Per class: Grad-CAM energy inside the lungs, the lungs' share of the image and their ratio."""
    if not share:
        return None
    classes = {k: v for k, v in share.items() if isinstance(v, dict) and "ratio" in v}
    masks = share.get("lung_masks") or {}
    return {
        "header": ["true class", "images", "CAM energy in the lungs", "lungs' share of the image", "ratio"],
        "rows": [
            [c, str(v["images"]), fmt(v["energy_in_lungs"]), fmt(v["lung_share"]), fmt(v["ratio"], 2)]
            for c, v in classes.items()
        ],
        "note": ", ".join(f"{k} masks {v}" for k, v in masks.items())
        + f"; {share.get('skipped_no_lungs', 0)} images without plausible lungs left out",
    }


def _per_source_rows(per_source: dict | None) -> dict | None:
    """Header and rows of the headline figures per source (None with a single source)."""
    if not per_source:
        return None
    keys = [k for k in ("n", *HEADLINE) if k in next(iter(per_source.values()))]
    return {
        "header": ["source", *(HEADLINE.get(k, k) for k in keys)],
        "rows": [[source, *(fmt(values[k]) for k in keys)] for source, values in per_source.items()],
    }
