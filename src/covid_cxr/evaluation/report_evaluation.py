"""The evaluation section and the header's at-a-glance figures, from the evaluation's metrics.json."""

from __future__ import annotations

from covid_cxr.evaluation.evaluate import METRICS_JSON
from covid_cxr.evaluation.report_format import fmt, interval, missing, with_ci
from covid_cxr.evaluation.report_images import evaluation_figures
from covid_cxr.evaluation.report_run import RunFiles

HEADLINE = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "macro_auc": "Macro ROC AUC",
    "micro_auc": "Micro ROC AUC",
}


def evaluation_section(files: RunFiles) -> dict:
    """Headline metrics with 95 % intervals, per-class and per-source tables, calibration, all figures."""
    e = files.metrics
    if e is None:
        return missing(f"no {files.evaluation.name}/{METRICS_JSON} (run `covid-cxr evaluate` on the run)")
    d = e["dataset"]
    intervals = (e.get("intervals") or {}).get("values", {})
    return {
        "dataset": [
            ("Data", f"{d['name']} ({d['source']})"),
            ("Images evaluated", d["n_evaluated"]),
            ("Unreadable", len(d.get("unreadable", []))),
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
        "figures": evaluation_figures(files.evaluation),
        "report_text": e["metrics"].get("report_text", ""),
    }


def at_a_glance(files: RunFiles) -> list[tuple[str, str]]:
    """The few figures the header shows: data, accuracy and macro AUC with intervals, ECE, shortcut flags."""
    e = files.metrics
    if e is None:
        return [("Evaluation", "not run")]
    intervals = (e.get("intervals") or {}).get("values", {})
    rows = [("Evaluated on", f"{e['dataset']['name']}, {e['dataset']['n_evaluated']} images")]
    for key in ("accuracy", "macro_auc"):
        value, ci = fmt(e["metrics"]["headline"].get(key)), interval(intervals.get(key))
        rows.append((HEADLINE[key], value if ci == "–" else f"{value} (95 % CI {ci})"))
    rows.append(("ECE after calibration", fmt(e["calibration"]["ece_after"])))
    shortcuts = e.get("shortcuts")
    flags = "not run" if shortcuts is None else str(len(shortcuts["flags"])) if shortcuts["flags"] else "none"
    return [*rows, ("Shortcut flags", flags)]


def headline_rows(headline: dict, intervals: dict) -> list[tuple[str, str, str]]:
    """(name, value, 95 % interval) of the headline figures."""
    return [
        (name, fmt(headline.get(key)), interval(intervals.get(key)))
        for key, name in HEADLINE.items()
        if key in headline
    ]


def _per_class_rows(metrics: dict, intervals: dict) -> list[list[str]]:
    """Per class: support, precision, sensitivity and specificity with intervals, F1, ROC AUC, AP."""
    rows = []
    for cls in metrics["classes"]:
        pc, rep = metrics["per_class"][cls], metrics["report"][cls]
        rows.append(
            [
                cls,
                str(pc["support"]),
                fmt(rep["precision"]),
                with_ci(pc["sensitivity"], intervals.get(f"sensitivity[{cls}]")),
                with_ci(pc["specificity"], intervals.get(f"specificity[{cls}]")),
                fmt(rep["f1"]),
                fmt(pc["roc_auc"]),
                fmt(pc["average_precision"]),
            ]
        )
    return rows


def _calibration_rows(cal: dict, temperature: dict) -> list[tuple[str, str]]:
    """Temperature (and how it was fitted), ECE and NLL before and after scaling."""
    if temperature.get("fitted"):
        fitted = f"fitted on {temperature.get('n_val', '?')} {temperature.get('fitted_on', 'val')} images"
    else:
        fitted = f"not fitted: {temperature.get('reason', 'unknown')}"
    return [
        ("Temperature T", f"{cal['temperature']:.3f} ({fitted})"),
        (f"ECE, {cal['n_bins']} bins (T = 1 → T)", f"{fmt(cal['ece_before'])} → {fmt(cal['ece_after'])}"),
        ("Negative log-likelihood (T = 1 → T)", f"{fmt(cal['nll_before'])} → {fmt(cal['nll_after'])}"),
    ]


def _per_source_rows(per_source: dict | None) -> dict | None:
    """Header and rows of the headline figures per source (None with a single source)."""
    if not per_source:
        return None
    keys = [k for k in ("n", *HEADLINE) if k in next(iter(per_source.values()))]
    return {
        "header": ["source", *(HEADLINE.get(k, k) for k in keys)],
        "rows": [[source, *(fmt(values[k]) for k in keys)] for source, values in per_source.items()],
    }
