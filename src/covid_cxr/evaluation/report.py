"""The self-contained HTML report of a run: checks, splits, training, evaluation, Grad-CAM, model card.

Everything is embedded (figures and overlays as base64 PNG data URIs, CSS inline, no scripts, no
fonts), so ``report.html`` opens offline and can be archived or mailed as one file. Pieces a run
never produced (no evaluation yet, no LR finder, no bundle) are shown as "not run".

Example:
    >>> build_report("runs/demo")  # writes runs/demo/report.html
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
import pandas as pd
import yaml

from covid_cxr import __version__
from covid_cxr.bundle import BUNDLE_JSON, INTENDED_USE, load_bundle
from covid_cxr.data.images import load_image
from covid_cxr.data.manifest import load_manifest
from covid_cxr.data.splits import SPLITS, leakage_report
from covid_cxr.errors import ConfigError, CxrError, DataError
from covid_cxr.evaluation.evaluate import METRICS_JSON, PREDICTIONS_CSV
from covid_cxr.evaluation.plots import FIGURES
from covid_cxr.evaluation.shortcuts import label_source_confounding
from covid_cxr.explain.cam import explain
from covid_cxr.explain.overlay import encode_png
from covid_cxr.io import atomic_write_text
from covid_cxr.predictor import Predictor
from covid_cxr.training.lr_find import PLOT_NAME as LR_FIND_PNG

log = logging.getLogger(__name__)

NOTICE = "Research use only — not for diagnosis"
REPORT_HTML = "report.html"
SECTIONS = {  # section id -> heading, in page order
    "config": "Configuration",
    "checks": "Data checks",
    "splits": "Splits and leakage",
    "training": "Training",
    "evaluation": "Evaluation",
    "gallery": "Grad-CAM gallery",
    "shortcuts": "Shortcut checks",
    "model_card": "Model card",
}
HEADLINE = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "macro_auc": "Macro ROC AUC",
    "micro_auc": "Micro ROC AUC",
}
SHORTCUT_TITLES = {
    "confounding": "Label × source confounding (training data)",
    "confounding_evaluated": "Label × source confounding (evaluated data)",
    "lungs_hidden": "Lungs hidden",
    "border_crop": "Border crop",
}
FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "confusion_matrix_normalized": "Confusion matrix (row-normalised)",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "reliability": "Reliability diagram",
}
THUMBNAIL = 256  # longest side of an embedded Grad-CAM overlay, pixels
SMALL_TEST = 100  # below this many evaluated images the intervals are wide: said in the model card
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, yaml.YAMLError, CxrError)
_LIMIT = 10  # rows shown of long listings


@dataclass
class RunFiles:
    """What the run folder holds, parsed once; a file that is there but unreadable is named in `problems`."""

    run: Path
    evaluation: Path
    config_text: str | None = None
    config: dict | None = None
    manifest: pd.DataFrame | None = None
    checks: dict | None = None
    metrics: dict | None = None
    bundle: dict | None = None
    problems: list[str] = field(default_factory=list)


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    gallery_per_class: int = 2,
    evaluation_dir: str | Path | None = None,
) -> Path:
    """Write the run's self-contained report (default ``run_dir/report.html``) atomically; return its path.

    `evaluation_dir` defaults to ``run_dir/evaluation``; `gallery_per_class` is how many right and how
    many wrong predictions of each class the Grad-CAM gallery shows (0 = no gallery).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    if gallery_per_class < 0:
        raise ConfigError(f"gallery_per_class must be >= 0, got {gallery_per_class}")
    files = read_run(run, Path(evaluation_dir) if evaluation_dir is not None else run / "evaluation")
    target = Path(out) if out is not None else run / REPORT_HTML
    atomic_write_text(target, render(report_context(files, gallery_per_class)))
    log.info("wrote report %s", target)
    return target


def read_run(run: Path, evaluation: Path) -> RunFiles:
    """Parse config.yaml, manifest.csv, checks.json, the evaluation's metrics.json and bundle.json."""
    files = RunFiles(run, evaluation)
    files.config_text = _read(files, run / "config.yaml", lambda p: p.read_text(encoding="utf-8"))
    if files.config_text is not None:
        files.config = _read(
            files, run / "config.yaml", lambda p: yaml.safe_load(p.read_text(encoding="utf-8"))
        )
    files.manifest = _read(files, run / "manifest.csv", load_manifest)
    files.checks = _read(files, run / "checks.json", _json)
    files.metrics = _read(files, evaluation / METRICS_JSON, _json)
    files.bundle = _read(files, run / "bundle" / BUNDLE_JSON, _json)
    return files


def report_context(files: RunFiles, gallery_per_class: int = 2) -> dict[str, Any]:
    """Everything the template shows: the header and one dict per section (``missing`` when not run)."""
    builders: dict[str, Callable[[], dict]] = {
        "config": lambda: config_section(files),
        "checks": lambda: checks_section(files),
        "splits": lambda: splits_section(files),
        "training": lambda: training_section(files),
        "evaluation": lambda: evaluation_section(files),
        "gallery": lambda: gallery_section(files, gallery_per_class),
        "shortcuts": lambda: shortcuts_section(files),
        "model_card": lambda: model_card(files),
    }
    sections = {key: _guarded(key, build) for key, build in builders.items()}
    return {
        "title": (files.config or {}).get("name") or files.run.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(files.run),
        "run_created": (files.bundle or {}).get("created"),
        "version": __version__,
        "notice": NOTICE,
        "problems": files.problems,
        "glance": _guarded("at a glance", lambda: at_a_glance(files), []),
        "headings": SECTIONS,
        "sections": sections,
    }


def render(context: dict[str, Any]) -> str:
    """The report HTML from its context (jinja2, every value autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("covid_cxr.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**context)


# --- sections ---------------------------------------------------------------------------------


def config_section(files: RunFiles) -> dict:
    """The resolved config.yaml, verbatim."""
    if files.config_text is None:
        return _missing("no config.yaml in the run folder")
    return {"yaml": files.config_text}


def checks_section(files: RunFiles) -> dict:
    """Totals, per-class table, label × source counts, confounding flags and unreadable files."""
    c = files.checks
    if c is None:
        return _missing("no checks.json in the run folder")
    duplicates = c["exact_duplicates"] + c["near_duplicates"]
    summary = [
        ("Images", c["n_images"]),
        ("Readable", c["n_readable"]),
        ("Unreadable", len(c["unreadable"])),
        ("Classes", len(c["classes"])),
        ("Imbalance ratio (largest / smallest class)", _fmt(c["imbalance_ratio"], 2)),
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
        "unreadable": [(u["path"], u["label"], u["reason"]) for u in c["unreadable"][:_LIMIT]],
        "unreadable_more": max(0, len(c["unreadable"]) - _LIMIT),
    }


def splits_section(files: RunFiles) -> dict:
    """Label × split counts and the patient, identical-file and near-duplicate leakage checks."""
    m = files.manifest
    if m is None:
        return _missing("no manifest.csv in the run folder")
    if "split" not in m:
        return _missing("manifest.csv has no split column")
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


def training_section(files: RunFiles) -> dict:
    """Training curves, the LR finder plot, per-epoch metrics and the best checkpoint's scores."""
    run = files.run
    curves, lr_plot = _png_uri(run / "curves.png"), _png_uri(run / LR_FIND_PNG)
    epochs = _read(files, run / "metrics.csv", pd.read_csv)
    tested = _read(files, run / "test_metrics.json", _json)
    if curves is None and epochs is None and tested is None:
        return _missing("no curves.png, metrics.csv or test_metrics.json in the run folder")
    return {
        "curves": curves,
        "lr_find": lr_plot,
        "epochs_header": [] if epochs is None else list(epochs.columns),
        "epochs": []
        if epochs is None
        else [[_fmt(v, 4) for v in row] for row in epochs.itertuples(index=False)],
        "best": [] if tested is None else [(k, _fmt(v, 4)) for k, v in tested.items()],
    }


def evaluation_section(files: RunFiles) -> dict:
    """Headline metrics with 95 % intervals, per-class and per-source tables, calibration, all figures."""
    e = files.metrics
    if e is None:
        return _missing(f"no {files.evaluation.name}/{METRICS_JSON} (run `covid-cxr evaluate` on the run)")
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


def gallery_section(files: RunFiles, per_class: int) -> dict:
    """Grad-CAM overlays of the most confident right and wrong predictions of each true class."""
    if per_class == 0:
        return _missing("gallery_per_class is 0")
    if files.bundle is None:
        return _missing("no bundle/ in the run folder")
    predictor = load_bundle(files.run / "bundle", backend="torch")
    candidates, described = _gallery_candidates(files, predictor)
    if candidates is None or candidates.empty:
        return _missing("no test images to explain")
    picked = pick_examples(candidates, predictor.classes, per_class)
    classes = [
        {
            "label": cls,
            **{kind: [_explained(predictor, row) for row in rows] for kind, rows in chosen.items()},
        }
        for cls, chosen in picked.items()
    ]
    layer = predictor.info.get("target_layer") or "last convolution"
    quality = (files.metrics or {}).get("explanations")
    return {"data": described, "layer": layer, "classes": classes, "quality": quality}


def shortcuts_section(files: RunFiles) -> dict:
    """The evaluation's shortcut checks, or at least label × source confounding from the manifest."""
    shortcuts = (files.metrics or {}).get("shortcuts")
    if shortcuts is None:
        if files.manifest is None:
            return _missing("no evaluation with shortcut checks and no manifest.csv")
        checks = {"confounding": label_source_confounding(files.manifest)}
        note = "the lungs-hidden and border-crop checks were not run (run `covid-cxr evaluate` on the run)"
    else:
        checks, note = {k: v for k, v in shortcuts.items() if k in SHORTCUT_TITLES}, ""
    return {"checks": [_shortcut(key, check) for key, check in checks.items()], "note": note}


def model_card(files: RunFiles) -> dict:
    """Intended use, model, training, data sources, metrics with intervals and limitations."""
    cfg, info = files.config or {}, files.bundle or {}
    if not cfg and not info:
        return _missing("no config.yaml and no bundle in the run folder")
    return {
        "intended_use": INTENDED_USE,
        "model": _model_rows(cfg, info),
        "training": _training_rows(cfg, info),
        "data": _data_rows(files),
        "metrics": _card_metrics(files.metrics),
        "limitations": limitations(files),
    }


def at_a_glance(files: RunFiles) -> list[tuple[str, str]]:
    """The few figures the header shows: data, accuracy and macro AUC with intervals, ECE, shortcut flags."""
    e = files.metrics
    if e is None:
        return [("Evaluation", "not run")]
    intervals = (e.get("intervals") or {}).get("values", {})
    rows = [("Evaluated on", f"{e['dataset']['name']}, {e['dataset']['n_evaluated']} images")]
    for key in ("accuracy", "macro_auc"):
        value, ci = _fmt(e["metrics"]["headline"].get(key)), _interval(intervals.get(key))
        rows.append((HEADLINE[key], value if ci == "–" else f"{value} (95 % CI {ci})"))
    rows.append(("ECE after calibration", _fmt(e["calibration"]["ece_after"])))
    shortcuts = e.get("shortcuts")
    flags = "not run" if shortcuts is None else str(len(shortcuts["flags"])) if shortcuts["flags"] else "none"
    return [*rows, ("Shortcut flags", flags)]


# --- section details --------------------------------------------------------------------------


def headline_rows(headline: dict, intervals: dict) -> list[tuple[str, str, str]]:
    """(name, value, 95 % interval) of the headline figures."""
    return [
        (name, _fmt(headline.get(key)), _interval(intervals.get(key)))
        for key, name in HEADLINE.items()
        if key in headline
    ]


def evaluation_figures(folder: Path) -> list[dict]:
    """Every PNG of the evaluation folder as {title, uri}: the standard figures first, then the rest."""
    known = [folder / name for name in FIGURES.values()]
    extra = sorted(p for p in folder.glob("*.png") if p not in known)
    titles = {name: FIGURE_TITLES.get(key, key) for key, name in FIGURES.items()}
    out = []
    for path in [p for p in known if p.is_file()] + extra:
        uri = _png_uri(path)
        if uri is not None:
            out.append({"title": titles.get(path.name, path.stem.replace("_", " ")), "uri": uri})
    return out


def pick_examples(
    candidates: pd.DataFrame, classes: list[str], per_class: int
) -> dict[str, dict[str, list[dict]]]:
    """class -> {"right": rows, "wrong": rows}: the `per_class` most confident of each, by true class."""
    out = {}
    for cls in classes:
        rows = candidates[candidates["true_class"] == cls]
        right = rows["predicted"] == cls
        out[cls] = {
            kind: _most_confident(rows[mask], per_class)
            for kind, mask in (("right", right), ("wrong", ~right))
        }
    return out


def _most_confident(rows: pd.DataFrame, n: int) -> list[dict]:
    """The n rows of highest confidence (ties by path) as records."""
    return rows.sort_values(["confidence", "path"], ascending=[False, True]).head(n).to_dict("records")


def limitations(files: RunFiles) -> list[str]:
    """What the numbers cannot tell: fixed caveats and those this run's data and checks raise."""
    out = [
        "Not validated for clinical use; no prospective or external clinical evaluation was done.",
        "Public COVID-19 chest X-ray collections assemble classes from different hospitals and datasets "
        "(e.g. the Normal and Viral Pneumonia images of the COVID-19 Radiography Database come partly from "
        "the pediatric Kermany set, while its COVID-19 images are of adults): a high score can reflect "
        "age, hospital, device or text markers rather than disease.",
        "Labels come from the source datasets and were not re-read by radiologists.",
        "Grad-CAM shows where the model's evidence lies, not that its reasoning is medically sound.",
    ]
    sources = sorted(set(files.manifest["source"].astype(str))) if files.manifest is not None else []
    if sources == ["synthetic"]:
        out.append(
            "Trained and tested on synthetic phantoms only: the figures say nothing about real X-rays."
        )
    for flag in (files.checks or {}).get("confounded_sources", []):
        out.append(f"Confounding: source {flag['source']!r} is {flag['share']:.0%} {flag['label']!r}.")
    e = files.metrics
    if e is not None:
        n = e["dataset"]["n_evaluated"]
        if n < SMALL_TEST:
            out.append(f"Evaluated on only {n} images: the 95 % intervals are wide.")
        if e["dataset"]["name"] == "test":
            out.append("Evaluated on a held-out split of the training sources only (no external dataset).")
        out.extend(f"Shortcut check: {text}" for text in (e.get("shortcuts") or {}).get("flags", []))
    else:
        out.append("The model has not been evaluated with intervals, calibration or shortcut checks yet.")
    return out


def _class_rows(checks: dict) -> list[list[str]]:
    """Per class: images, readable, size range, grey-level mean and std, largest source share."""
    share = {d["label"]: f"{d['share']:.0%} ({d['source']})" for d in checks["class_dependence"]}
    return [
        [
            c["label"],
            str(c["images"]),
            str(c["readable"]),
            _size_range(c),
            _fmt(c["pixel_mean"], 1),
            _fmt(c["pixel_std"], 1),
            share.get(c["label"], "–"),
        ]
        for c in checks["classes"]
    ]


def _size_range(c: dict) -> str:
    """'width range × height range' of one class's readable images, '–' without any."""
    if c["min_width"] is None:
        return "–"
    return f"{_span(c['min_width'], c['max_width'])} × {_span(c['min_height'], c['max_height'])}"


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


def _per_class_rows(metrics: dict, intervals: dict) -> list[list[str]]:
    """Per class: support, precision, sensitivity and specificity with intervals, F1, ROC AUC, AP."""
    rows = []
    for cls in metrics["classes"]:
        pc, rep = metrics["per_class"][cls], metrics["report"][cls]
        rows.append(
            [
                cls,
                str(pc["support"]),
                _fmt(rep["precision"]),
                _with_ci(pc["sensitivity"], intervals.get(f"sensitivity[{cls}]")),
                _with_ci(pc["specificity"], intervals.get(f"specificity[{cls}]")),
                _fmt(rep["f1"]),
                _fmt(pc["roc_auc"]),
                _fmt(pc["average_precision"]),
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
        (f"ECE, {cal['n_bins']} bins (T = 1 → T)", f"{_fmt(cal['ece_before'])} → {_fmt(cal['ece_after'])}"),
        ("Negative log-likelihood (T = 1 → T)", f"{_fmt(cal['nll_before'])} → {_fmt(cal['nll_after'])}"),
    ]


def _per_source_rows(per_source: dict | None) -> dict | None:
    """Header and rows of the headline figures per source (None with a single source)."""
    if not per_source:
        return None
    keys = [k for k in ("n", *HEADLINE) if k in next(iter(per_source.values()))]
    return {
        "header": ["source", *(HEADLINE.get(k, k) for k in keys)],
        "rows": [[source, *(_fmt(values[k]) for k in keys)] for source, values in per_source.items()],
    }


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
        "rows": [[cls, _fmt(full.get(cls)), _fmt(value)] for cls, value in check[altered].items()],
    }


def _model_rows(cfg: dict, info: dict) -> list[tuple[str, str]]:
    """Architecture, head, input, classes, temperature and Grad-CAM layer."""
    model = cfg.get("model", {})
    pre = info.get("preprocess") or cfg.get("preprocess", {})
    head = info.get("head") or model.get("head", {})
    rows = [
        ("Architecture", info.get("arch") or model.get("arch", "–")),
        ("Pretrained weights / frozen", f"{model.get('pretrained', '–')} / {model.get('freeze', '–')}"),
        ("Head", ", ".join(f"{k} {v}" for k, v in head.items())),
        (
            "Input",
            f"{pre.get('size', '–')} px, {pre.get('channels', '–')} channel(s), normalize "
            f"{pre.get('normalize', '–')}, CLAHE {pre.get('clahe') or 'off'}",
        ),
        ("Classes", ", ".join(info.get("class_names", [])) or "–"),
        ("Temperature", _fmt(info.get("temperature"))),
        ("Grad-CAM target layer", info.get("target_layer") or "–"),
    ]
    return [(k, str(v)) for k, v in rows]


def _training_rows(cfg: dict, info: dict) -> list[tuple[str, str]]:
    """Run name, preset / seed reference, seeds, epochs, optimiser, bundle time and version."""
    train, optim, data = cfg.get("train", {}), cfg.get("optim", {}), cfg.get("data", {})
    rows = [
        ("Run", cfg.get("name") or info.get("run", {}).get("name", "–")),
        ("Preset / seed reference", cfg.get("seed_ref") or info.get("run", {}).get("seed_ref") or "–"),
        ("Description", cfg.get("description") or "–"),
        ("Seeds (training / split)", f"{train.get('seed', '–')} / {data.get('seed', '–')}"),
        ("Epochs, batch size", f"{train.get('epochs', '–')}, {train.get('batch_size', '–')}"),
        (
            "Optimiser",
            f"{optim.get('name', '–')}, lr {optim.get('lr', '–')}, weight decay "
            f"{optim.get('weight_decay', '–')}",
        ),
        ("Class balance", data.get("balance", "–")),
        ("Bundle created", info.get("created", "–")),
        ("covid-cxr version", info.get("covid_cxr_version", "–")),
        ("Training-data fingerprint (SHA-256)", info.get("data_fingerprint", "–")),
    ]
    return [(k, str(v)) for k, v in rows]


def _data_rows(files: RunFiles) -> list[tuple[str, str]]:
    """The configured source and the images per source and per split."""
    source = (files.config or {}).get("data", {}).get("source") or "given on the command line"
    rows = [("Data source", str(source))]
    m = files.manifest
    if m is not None:
        counts = m["source"].fillna("").astype(str).replace("", "(unnamed)").value_counts()
        rows.append(("Images per source", ", ".join(f"{s}: {n}" for s, n in counts.items())))
        if "split" in m:
            splits = m["split"].astype(str).value_counts()
            rows.append(("Images per split", ", ".join(f"{s}: {splits.get(s, 0)}" for s in SPLITS)))
    return rows


def _card_metrics(metrics: dict | None) -> list[tuple[str, str, str]]:
    """The headline figures with intervals, or nothing before evaluation."""
    if metrics is None:
        return []
    intervals = (metrics.get("intervals") or {}).get("values", {})
    return headline_rows(metrics["metrics"]["headline"], intervals)


def _gallery_candidates(files: RunFiles, predictor: Predictor) -> tuple[pd.DataFrame | None, str]:
    """path, true_class, predicted, confidence: from the evaluation's predictions, else the test split."""
    predictions = files.evaluation / PREDICTIONS_CSV
    if files.metrics is not None and predictions.is_file():
        frame = pd.read_csv(predictions)
        p = frame[[f"p_{c}" for c in predictor.classes]].to_numpy()
        frame["confidence"] = p[np.arange(len(frame)), frame["predicted"].map(predictor.classes.index)]
        return frame, str(files.metrics["dataset"]["source"])
    m = files.manifest
    if m is None or "split" not in m:
        return None, ""
    test = m[(m["split"] == "test") & m["label"].astype(str).isin(predictor.classes)]
    frame = _predict_rows(predictor, test["path"].astype(str).tolist(), test["label"].astype(str).tolist())
    return frame, "the run's test split"


def _predict_rows(predictor: Predictor, paths: list[str], labels: list[str], batch: int = 32) -> pd.DataFrame:
    """Predictions for the files that decode (the others are logged and left out)."""
    rows = []
    for start in range(0, len(paths), batch):
        decoded = []
        for path, label in zip(paths[start : start + batch], labels[start : start + batch], strict=True):
            try:
                decoded.append((path, label, load_image(path)))
            except CxrError as exc:
                log.warning("gallery: skipping %s: %s", path, exc)
        if decoded:
            probs = predictor.predict([image for _, _, image in decoded])
            rows += [
                {
                    "path": path,
                    "true_class": label,
                    "predicted": predictor.classes[int(row.argmax())],
                    "confidence": float(row.max()),
                }
                for (path, label, _), row in zip(decoded, probs, strict=True)
            ]
    return pd.DataFrame(rows, columns=["path", "true_class", "predicted", "confidence"])


def _explained(predictor: Predictor, row: dict) -> dict:
    """One gallery item: the Grad-CAM overlay for the predicted class as a data URI, and its caption."""
    try:
        image = load_image(row["path"])
    except CxrError as exc:
        return {"uri": None, "name": Path(row["path"]).name, "caption": f"could not be read: {exc}"}
    result = explain(predictor, image, target=row["predicted"])
    probability = result.probabilities[row["predicted"]]
    return {
        "uri": _uri(encode_png(_thumbnail(result.overlay))),
        "name": Path(row["path"]).name,
        "caption": f"true {row['true_class']} · predicted {row['predicted']} · p = {probability:.2f}",
    }


# --- helpers ----------------------------------------------------------------------------------


def _read(files: RunFiles, path: Path, parse: Callable[[Path], Any]) -> Any:
    """parse(path), None when the file is absent; a parse failure is logged and named in files.problems."""
    if not path.is_file():
        return None
    try:
        return parse(path)
    except _READ_ERRORS as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        files.problems.append(f"{path}: {exc}")
        return None


def _guarded(key: str, build: Callable[[], Any], fallback: Any = None) -> Any:
    """build(), or `fallback` (default: a 'could not be built' section) when the files are malformed.

    The report never fails on one section: the error is logged and shown in its place.
    """
    try:
        return build()
    except _READ_ERRORS as exc:
        log.warning("report: %s failed: %s", key, exc, exc_info=True)
        return _missing(f"could not be built: {type(exc).__name__}: {exc}") if fallback is None else fallback


def _missing(reason: str) -> dict:
    """A section shown as 'not run' with the reason."""
    return {"missing": reason}


def _json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def _png_uri(path: Path) -> str | None:
    """A PNG file as a data URI; None when absent or not a PNG."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        log.warning("report: %s is not a PNG; left out", path)
        return None
    return _uri(data)


def _uri(png: bytes) -> str:
    """PNG bytes as a base64 data URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The image shrunk so its longest side is at most THUMBNAIL pixels (never enlarged)."""
    scale = THUMBNAIL / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _fmt(value: Any, digits: int = 3) -> str:
    """A table cell: '–' for missing values, fixed decimals for floats."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def _span(low: int, high: int) -> str:
    """'low–high', or one number when they are equal."""
    return str(low) if low == high else f"{low}–{high}"


def _interval(ci: dict | None) -> str:
    """'lower–upper' of a bootstrap interval, '–' when none."""
    if not ci or ci.get("lower") is None:
        return "–"
    return f"{_fmt(ci['lower'])}–{_fmt(ci['upper'])}"


def _with_ci(value: float | None, ci: dict | None) -> str:
    """'value (lower–upper)', or the value alone without an interval."""
    text = _fmt(value)
    return text if not ci or ci.get("lower") is None else f"{text} ({_interval(ci)})"
