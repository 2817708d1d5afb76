"""The section "Will this hold at another hospital?": internal vs external, per source, source predictability.

Built only from what evaluate wrote (each evaluation's ``false_covid``, ``per_source``,
``source_predictability`` and lungs-hidden check), with a plain-language verdict.
"""

from __future__ import annotations

from covid_cxr.report.evaluation import column_label
from covid_cxr.report.format import fmt, missing, with_ci
from covid_cxr.report.run_files import Evaluation, RunFiles

HIGH_FALSE_COVID = (
    0.10  # an external set with more of its non-COVID images called COVID is named in the verdict
)
HEADER = [
    "dataset",
    "images",
    "accuracy (95 % CI)",
    "macro ROC AUC (95 % CI)",
    "non-COVID called COVID (95 % CI)",
    "COVID recall",
    "macro AUC, lungs hidden",
    "source predictability",
]


def generalisation_section(files: RunFiles) -> dict:
    """The internal vs external table, per-source metrics, source predictability, lungs hidden, verdict."""
    if not files.evaluations:
        return missing(
            "no evaluation yet (covid-cxr evaluate RUN, and --data OTHER for another hospital's data)"
        )
    return {
        "table": {"header": HEADER, "rows": [_row(e) for e in files.evaluations]},
        "per_source": _per_source(files.internal),
        "predictability": [
            _predictability(e) for e in files.evaluations if e.metrics.get("source_predictability")
        ],
        "lungs_hidden": [_lungs_hidden(e) for e in files.evaluations if _hidden(e)],
        "verdict": verdict(files.evaluations),
    }


def _row(e: Evaluation) -> list[str]:
    """One evaluation's row of the internal vs external table."""
    head = e.metrics["metrics"]["headline"]
    values = (e.metrics.get("intervals") or {}).get("values", {})
    fc = e.metrics.get("false_covid") or {}
    false_covid = "–"
    if fc.get("n_non_covid"):
        false_covid = f"{with_ci(fc['share'], fc.get('interval'))} of {fc['n_non_covid']}"
    sp = e.metrics.get("source_predictability") or {}
    hidden = _hidden(e)
    return [
        column_label(e),
        str(e.metrics["dataset"]["n_evaluated"]),
        with_ci(head.get("accuracy"), values.get("accuracy")),
        with_ci(head.get("macro_auc"), values.get("macro_auc")),
        false_covid,
        fmt(fc.get("covid_recall")),
        fmt(sum(hidden.values()) / len(hidden)) if hidden else "–",
        str(sp.get("verdict", "not run")).split(":", 1)[0],
    ]


def _hidden(e: Evaluation) -> dict[str, float]:
    """Per-class ROC AUC with the lungs hidden (empty when the check was not run)."""
    check = (e.metrics.get("shortcuts") or {}).get("lungs_hidden") or {}
    return {k: v for k, v in (check.get("auc_hidden") or {}).items() if v is not None}


def _per_source(internal: Evaluation | None) -> dict | None:
    """Headline metrics of each source of the test split (None with one source)."""
    per_source = (internal.metrics.get("per_source") if internal else None) or {}
    if not per_source:
        return None
    keys = ("n", "accuracy", "balanced_accuracy", "macro_auc")
    return {
        "header": ["source", "images", "accuracy", "balanced accuracy", "macro ROC AUC"],
        "rows": [[name, *(fmt(m.get(k)) for k in keys)] for name, m in per_source.items()],
    }


def _predictability(e: Evaluation) -> dict:
    """Status, verdict and per-class AUC of source prediction from the model's features."""
    sp = e.metrics["source_predictability"]
    rows = [
        [
            label,
            ", ".join(f"{s} {n}" for s, n in v.get("images", {}).items()),
            fmt(v.get("auc")),
            fmt(v.get("chance")),
        ]
        for label, v in sp.get("per_class", {}).items()
    ]
    return {
        "title": column_label(e),
        "status": str(sp.get("verdict", "")).split(":", 1)[0],
        "verdict": sp.get("verdict", ""),
        "classifier": sp.get("classifier", ""),
        "header": ["class", "images per source", "CV ROC AUC (0.5 = chance)", "chance accuracy"],
        "rows": rows,
    }


def _lungs_hidden(e: Evaluation) -> dict:
    """Per-class ROC AUC on full images and with the lungs hidden."""
    check = e.metrics["shortcuts"]["lungs_hidden"]
    full = check.get("auc_full") or {}
    return {
        "title": column_label(e),
        "header": ["class", "ROC AUC, full image", "ROC AUC, lungs hidden"],
        "rows": [[c, fmt(full.get(c)), fmt(v)] for c, v in (check.get("auc_hidden") or {}).items()],
    }


def verdict(evaluations: list[Evaluation]) -> str:
    """A few plain sentences: external results, false-COVID shares, source and lungs-hidden evidence."""
    external = [e for e in evaluations if e.external]
    parts = []
    if not external:
        parts.append(
            "Not answered yet: the model was evaluated only on its own test split, which shares its sources "
            "(covid-cxr evaluate RUN --data OTHER)."
        )
    for e in external:
        fc = e.metrics.get("false_covid") or {}
        if fc.get("share") is not None and fc["share"] > HIGH_FALSE_COVID:
            parts.append(
                f"On {e.name} it calls {fc['share']:.0%} of the non-COVID images COVID "
                f"({fc['called_covid']} of {fc['n_non_covid']}): it would not hold there."
            )
        elif fc.get("share") is not None:
            parts.append(f"On {e.name} it calls {fc['share']:.0%} of the non-COVID images COVID.")
    if any((e.metrics.get("source_predictability") or {}).get("flag") for e in evaluations):
        parts.append("Its features tell the sources apart within a class: it encodes the hospital.")
    if any(((e.metrics.get("shortcuts") or {}).get("lungs_hidden") or {}).get("flag") for e in evaluations):
        parts.append(
            "It still tells the classes apart with the lungs hidden: it reads something besides the lungs."
        )
    if (
        len(parts) == len(external)
        and external
        and all((e.metrics.get("false_covid") or {}).get("share", 1) <= HIGH_FALSE_COVID for e in external)
    ):
        parts.append("No check here says it will fail elsewhere; a few external sets are still no guarantee.")
    return " ".join(parts)
