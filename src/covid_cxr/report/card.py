"""The report's model card: intended use, model, training, data, metrics with intervals, limitations."""

from __future__ import annotations

from covid_cxr.bundle_info import INTENDED_USE
from covid_cxr.data.splits import SPLITS
from covid_cxr.report.evaluation import column_label, headline_rows, shortcut_summary, with_interval
from covid_cxr.report.format import fmt, missing
from covid_cxr.report.run_files import RunFiles

SMALL_TEST = 100  # below this many evaluated images the intervals are wide: said in the model card


def model_card(files: RunFiles) -> dict:
    """Intended use, model, training, data sources, metrics with intervals and limitations."""
    cfg, info = files.config or {}, files.bundle or {}
    if not cfg and not info:
        return missing("no config.yaml and no bundle in the run folder")
    return {
        "intended_use": INTENDED_USE,
        "model": _model_rows(cfg, info),
        "training": _training_rows(cfg, info),
        "data": _data_rows(files),
        "metrics": _card_metrics(files),
        "external": _external_rows(files),
        "limitations": limitations(files),
    }


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
    for flag in ((files.checks or {}).get("acquisition") or {}).get("flagged", []):
        cues = ", ".join(flag.get("features", []))
        out.append(
            f"Acquisition cues: {flag['label']!r} is recognisable from how its files were stored ({cues}; "
            f"AUC {flag['auc']:.2f} from the file facts alone): a model can learn the collection, "
            "not the disease."
        )
    for flag in (files.checks or {}).get("confounded_sources", []):
        out.append(f"Confounding: source {flag['source']!r} is {flag['share']:.0%} {flag['label']!r}.")
    for e in files.evaluations:
        n = e.metrics["dataset"]["n_evaluated"]
        if n < SMALL_TEST:
            out.append(f"{column_label(e)}: evaluated on only {n} images, so the 95 % intervals are wide.")
        flags = (e.metrics.get("shortcuts") or {}).get("flags", [])
        out.extend(f"Shortcut check ({column_label(e)}): {text}" for text in flags)
    if not files.evaluations:
        out.append("The model has not been evaluated with intervals, calibration or shortcut checks yet.")
    elif not any(e.external for e in files.evaluations):
        out.append("Evaluated on a held-out split of the training sources only (no external dataset).")
    return out


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
        ("Temperature", f"{fmt(info.get('temperature'))} ({_calibration_reason(info)})"),
        ("Grad-CAM target layer", info.get("target_layer") or "–"),
    ]
    return [(k, str(v)) for k, v in rows]


def _calibration_reason(info: dict) -> str:
    """Why the bundle has its temperature (the calibration step's decision)."""
    return (info.get("calibration") or {}).get("reason") or "not calibrated"


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
    data = (files.config or {}).get("data", {})
    options = ", ".join(f"{k}={v}" for k, v in (data.get("reader_options") or {}).items()) or "none"
    rows = [
        ("Data source", str(data.get("source") or "not recorded")),
        ("Reader and options", f"{data.get('reader', 'auto')}; {options}"),
    ]
    m = files.manifest
    if m is not None:
        counts = m["source"].fillna("").astype(str).replace("", "(unnamed)").value_counts()
        rows.append(("Images per source", ", ".join(f"{s}: {n}" for s, n in counts.items())))
        if "split" in m:
            splits = m["split"].astype(str).value_counts()
            rows.append(("Images per split", ", ".join(f"{s}: {splits.get(s, 0)}" for s in SPLITS)))
    return rows


def _card_metrics(files: RunFiles) -> list[tuple[str, str, str]]:
    """The test split's headline figures with intervals, or nothing before evaluation."""
    if files.internal is None:
        return []
    metrics = files.internal.metrics
    intervals = (metrics.get("intervals") or {}).get("values", {})
    return headline_rows(metrics["metrics"]["headline"], intervals)


def _external_rows(files: RunFiles) -> list[list[str]]:
    """One row per external dataset: name, images, accuracy and macro AUC with intervals, shortcut flags."""
    return [
        [
            e.name,
            str(e.metrics["dataset"]["n_evaluated"]),
            with_interval(e, "accuracy"),
            with_interval(e, "macro_auc"),
            shortcut_summary(e),
        ]
        for e in files.evaluations
        if e.external
    ]
