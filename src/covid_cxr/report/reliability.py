"""Reliability in the evaluation section: side-by-side rows and one plain line per dataset.

Read from each evaluation's ``reliability`` (see :mod:`covid_cxr.evaluation.reliability`): conformal
coverage with its Wilson interval, mean set size, the OOD flag rate and the abstain rate. An
evaluation written before evaluate measured them shows "not measured"; a bundle without the OOD
detector or the conformal sets shows "not available" and the evaluation's note.
"""

from __future__ import annotations

from covid_cxr.report.format import fmt, with_ci
from covid_cxr.report.run_files import Evaluation

NOT_MEASURED = "not measured"
NOT_AVAILABLE = "not available"
METHOD_NAMES = {"mahalanobis": "Mahalanobis", "knn": "kNN"}


def reliability_rows(evaluations: list[Evaluation]) -> list[list[str]]:
    """Rows of the side-by-side table: coverage (interval, target), mean set size, OOD flag, abstain rates."""
    cells = [_cells(e.metrics.get("reliability")) for e in evaluations]
    names = ("conformal coverage (95 % CI)", "mean prediction set size", "OOD flag rate", "abstain rate")
    return [[name, *(c[i] for c in cells)] for i, name in enumerate(names)]


def reliability_line(evaluation: Evaluation, label: str) -> str:
    """What the prediction sets, the OOD score, the gate and abstention did on one dataset, in words."""
    rel = evaluation.metrics.get("reliability")
    if rel is None:
        return f"{label}: reliability {NOT_MEASURED} (evaluated before evaluate reported it; evaluate again)."
    parts = [_sets_text(rel.get("conformal")), _ood_text(rel.get("ood")), _gate_text(rel["gate"])]
    parts.append(_abstain_text(rel["abstain"]))
    note = str(rel.get("note") or "")
    note = f" {note[:1].upper()}{note[1:]}." if note else ""
    return f"{label}: " + "; ".join(p for p in parts if p) + "." + note


def _cells(rel: dict | None) -> tuple[str, str, str, str]:
    """(coverage, mean set size, OOD flag rate, abstain rate) cells of one evaluation."""
    if rel is None:
        return (NOT_MEASURED,) * 4
    conformal, ood, abstain = rel.get("conformal"), rel.get("ood"), rel["abstain"]
    coverage = size = ood_cell = NOT_AVAILABLE
    if conformal is not None and conformal["n"]:
        ci = conformal["coverage"]
        coverage = f"{with_ci(ci['point'], ci)}, target {fmt(conformal['target_coverage'], 2)}"
        size = fmt(conformal["mean_set_size"], 2)
    if ood is not None and ood["n"]:
        ood_cell = f"{with_ci(ood['rate']['point'], ood['rate'])} of {ood['n']}"
    rate = abstain.get("rate")
    return coverage, size, ood_cell, with_ci(rate["point"], rate) if rate else "–"


def _percent(hits: int, n: int, noun: str = "") -> str:
    """'hits of n noun (share %)'."""
    return f"{hits} of {n}{noun} ({hits / n:.0%})" if n else f"{hits} of {n}{noun}"


def _sets_text(conformal: dict | None) -> str:
    """The prediction sets' coverage and sizes in words ('' when the bundle has none)."""
    if conformal is None or not conformal["n"]:
        return ""
    covered = _percent(conformal["covered"], conformal["n"], " images of the model's classes")
    return (
        f"{conformal['method'].upper()} sets at a {conformal['target_coverage']:.0%} target held the true "
        f"class of {covered}, "
        f"{conformal['mean_set_size']:.2f} classes on average ({conformal['singleton_share']:.0%} single, "
        f"{conformal['empty_share']:.0%} empty)"
    )


def _ood_text(ood: dict | None) -> str:
    """The OOD flag rate, and that of each data label the model does not know."""
    if ood is None:
        return ""
    other = [
        f"{label} (not a model class) {v['flagged']} of {v['n']}"
        for label, v in ood.get("per_label", {}).items()
        if not v["model_class"]
    ]
    method = METHOD_NAMES.get(ood["method"], ood["method"])
    text = f"the {method} OOD score flagged {_percent(ood['flagged'], ood['n'])}"
    return text + (f", of them {', '.join(other)}" if other else "")


def _gate_text(gate: dict) -> str:
    """How many images the input gate stopped, by reason."""
    n = gate["n"]
    reasons = [f"{r.replace('_', ' ')} {v['count']}" for r, v in gate["reasons"].items() if v["count"]]
    skipped = f", {', '.join(gate['unavailable'])} not checked" if gate.get("unavailable") else ""
    return (
        f"the input gate stopped {_percent(n - gate['passed'], n)}"
        + (f": {', '.join(reasons)}" if reasons else "")
        + skipped
    )


def _abstain_text(abstain: dict) -> str:
    """The abstain share and its reasons."""
    reasons = ", ".join(f"{r.replace('_', ' ')} {k}" for r, k in abstain["reasons"].items())
    text = f"{_percent(abstain['abstained'], abstain['n'])} would abstain"
    return text + (f" ({reasons})" if reasons else "")
