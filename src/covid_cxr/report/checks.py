"""The data-check and leakage tables of the report, from checks.json and the split manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covid_cxr.data.splits import SPLITS, leakage_report
from covid_cxr.report.format import fmt, missing, span
from covid_cxr.report.run_files import RunFiles

_LIMIT = 10  # rows shown of long listings


def checks_section(files: RunFiles) -> dict:
    """Totals, per-class table, label × source counts, confounding flags and unreadable files."""
    c = files.checks
    if c is None:
        return missing("no checks.json in the run folder")
    duplicates = c["exact_duplicates"] + c["near_duplicates"]
    summary = [
        ("Images", c["n_images"]),
        ("Readable", c["n_readable"]),
        ("Unreadable", len(c["unreadable"])),
        ("Classes", len(c["classes"])),
        ("Imbalance ratio (largest / smallest class)", fmt(c["imbalance_ratio"], 2)),
        ("Patients", c["n_patients"]),
        (
            "Images per patient (mean / max)",
            f"{c['mean_images_per_patient']:.2f} / {c['max_images_per_patient']}",
        ),
        ("Exact duplicate groups", len(c["exact_duplicates"])),
        (
            f"Near-duplicate groups (phash distance ≤ {c['near_duplicate_distance']}, confirmed)",
            len(c["near_duplicates"]),
        ),
        ("Duplicate groups with conflicting labels", sum(len(set(g["labels"])) > 1 for g in duplicates)),
        ("Reader problems", len(c.get("problems", []))),
        ("Usable for training", "yes" if c["usable"] else f"NO: {c['unusable_reason']}"),
    ]
    return {
        "summary": summary,
        "classes": _class_rows(c),
        "label_source": _crosstab(c["label_source"]),
        "confounded": [
            f"source {f['source']!r} is {f['share']:.0%} {f['label']!r} ({f['images']} images): "
            "a model can learn the source instead of the disease"
            for f in c["confounded_sources"]
        ],
        "acquisition": acquisition_rows(c.get("acquisition")),
        "unreadable": [(u["path"], u["label"], u["reason"]) for u in c["unreadable"][:_LIMIT]],
        "unreadable_more": max(0, len(c["unreadable"]) - _LIMIT),
    }


def acquisition_rows(acquisition: dict | None) -> dict:
    """The acquisition-cue verdict, per-class AUC with each class's most common facts, and the evidence."""
    if not acquisition:
        return missing("checks.json has no acquisition-cue check (written by an older covid-cxr)")
    verdict = str(acquisition.get("verdict", ""))
    features = acquisition.get("features", [])
    rows = []
    for cls in acquisition.get("classes", []):
        facts = acquisition.get("distributions", {}).get(cls, {})
        rows.append(
            [cls, fmt(acquisition.get("auc", {}).get(cls)), *(_top(facts.get(f, {})) for f in features)]
        )
    return {
        "status": verdict.split(":", 1)[0] if ":" in verdict else "?",
        "verdict": verdict,
        "header": ["class", "cue AUC", *features],
        "rows": rows,
        "evidence": [e for flag in acquisition.get("flagged", []) for e in flag.get("evidence", [])],
        "classifier": acquisition.get("classifier", ""),
    }


def _top(counts: dict) -> str:
    """'JPEG 300' or 'PNG 250, JPEG 50': the two most common values of one fact in one class."""
    return ", ".join(f"{value} {n}" for value, n in list(counts.items())[:2]) or "–"


def splits_section(files: RunFiles) -> dict:
    """Label × split counts and the patient, identical-file and near-duplicate leakage checks."""
    m = files.manifest
    if m is None:
        return missing("no manifest.csv in the run folder")
    if "split" not in m:
        return missing("manifest.csv has no split column")
    table = pd.crosstab(m["label"].astype(str), m["split"].astype(str), margins=True, margins_name="total")
    columns = [s for s in SPLITS if s in table.columns] + ["total"]
    leaks = leakage_report(m, examples=5)
    near = _duplicate_leaks(m, files.checks)
    group_by_patient = (files.config or {}).get("data", {}).get("group_by_patient", True)
    checks = [
        _leak_row("Patients in more than one split", leaks["patients"], "patient_id"),
        _leak_row("Identical files (SHA-256) in more than one split", leaks["sha256"], "sha256"),
        near,
    ]
    return {
        "header": ["label", *columns],
        "rows": [[str(label), *(int(table.loc[label, s]) for s in columns)] for label in table.index],
        "leakage": checks,
        "note": "" if group_by_patient else "data.group_by_patient is false: patients were not kept apart",
    }


def _class_rows(checks: dict) -> list[list[str]]:
    """Per class: images, readable, size range, grey-level mean and std, largest source share."""
    share = {d["label"]: f"{d['share']:.0%} ({d['source']})" for d in checks["class_dependence"]}
    return [
        [
            c["label"],
            str(c["images"]),
            str(c["readable"]),
            _size_range(c),
            fmt(c["pixel_mean"], 1),
            fmt(c["pixel_std"], 1),
            share.get(c["label"], "–"),
        ]
        for c in checks["classes"]
    ]


def _size_range(c: dict) -> str:
    """'width range × height range' of one class's readable images, '–' without any."""
    if c["min_width"] is None:
        return "–"
    return f"{span(c['min_width'], c['max_width'])} × {span(c['min_height'], c['max_height'])}"


def _crosstab(counts: dict[str, dict[str, int]]) -> dict:
    """Header and rows of a label × value count table (zeros filled in)."""
    values = sorted({v for row in counts.values() for v in row})
    return {
        "header": ["label", *values],
        "rows": [[label, *(row.get(v, 0) for v in values)] for label, row in counts.items()],
    }


def _duplicate_leaks(manifest: pd.DataFrame, checks: dict | None) -> dict:
    """The near-duplicate leakage row: duplicate groups of checks.json whose files sit in several splits."""
    title = "Duplicate groups (exact or near) spanning several splits"
    if checks is None:
        return {"check": title, "count": "–", "status": "not run", "examples": []}
    split_of = dict(zip(manifest["path"].astype(str), manifest["split"].astype(str), strict=True))
    leaks = []
    for group in checks["exact_duplicates"] + checks["near_duplicates"]:
        splits = sorted({split_of[p] for p in group["paths"] if p in split_of})
        if len(splits) > 1:
            leaks.append(f"{', '.join(Path(p).name for p in group['paths'])} ({'/'.join(splits)})")
    return {"check": title, "count": len(leaks), "status": "FAIL" if leaks else "OK", "examples": leaks[:5]}


def _leak_row(title: str, found: dict, column: str) -> dict:
    """One leakage_report entry as a table row."""
    examples = [f"{e[column]} ({'/'.join(e['splits'])})" for e in found["examples"]]
    return {
        "check": title,
        "count": found["count"],
        "status": "FAIL" if found["count"] else "OK",
        "examples": examples,
    }
