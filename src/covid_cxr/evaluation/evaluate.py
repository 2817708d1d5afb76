"""Evaluate a run on its test split or another dataset: intervals, calibration, shortcut checks, figures.

Writes ``run_dir/evaluation/`` (or ``evaluation-<dataset name>/`` for another dataset, see
:class:`covid_cxr.run_dir.RunDir`): ``metrics.json``, ``predictions.csv``, the figures of
:mod:`covid_cxr.evaluation.plots` and the Grad-CAM gallery (``gallery.json``, ``gallery/``).
The bundle is only read: its temperature is fitted by :mod:`covid_cxr.evaluation.calibrate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covid_cxr.bundle import load_bundle
from covid_cxr.data.images import load_image
from covid_cxr.data.manifest import load_manifest
from covid_cxr.data.preprocess import preprocess
from covid_cxr.data.readers import read_source
from covid_cxr.data.sources import DROP, apply_class_map
from covid_cxr.errors import DataError, ImageError
from covid_cxr.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from covid_cxr.evaluation.gallery import write_gallery
from covid_cxr.evaluation.generalisation import false_covid, penultimate, source_predictability
from covid_cxr.evaluation.intervals import headline_intervals
from covid_cxr.evaluation.metrics import classification_summary, headline
from covid_cxr.evaluation.plots import write_figures
from covid_cxr.evaluation.reliability import dataset_reliability, pooled_features, prediction_columns
from covid_cxr.evaluation.shortcuts import (
    border_crop_check,
    crop_border,
    hide_lungs,
    label_source_confounding,
    lung_mask,
    lungs_hidden_check,
    predicted_lung_mask,
)
from covid_cxr.explain.lung_share import cam_lung_share
from covid_cxr.io import atomic_write_text
from covid_cxr.lungs import segment
from covid_cxr.predictor import Predictor
from covid_cxr.reliability.gate import GateResult, check_image
from covid_cxr.run_dir import METRICS_JSON, PREDICTIONS_CSV, TEST, RunDir, dataset_slug

log = logging.getLogger(__name__)

N_BINS = 15
VARIANTS = ("full", "lungs_hidden", "border_crop")
# Spellings of one class across datasets, compared after lower-casing and turning _ - / into spaces.
ALIASES: dict[str, tuple[str, ...]] = {
    "covid": ("covid", "covid 19", "covid19", "sars cov 2", "covid 19 pneumonia", "covid pneumonia"),
    "normal": ("normal", "no finding", "healthy"),
    "viral": ("viral", "viral pneumonia", "virus", "pneumonia viral"),
    "bacterial": ("bacterial", "bacterial pneumonia", "bacteria", "pneumonia bacterial"),
}


@dataclass
class Predictions:
    """Logits of the images that decoded (their manifest positions in `rows`) and those that did not."""

    rows: list[int] = field(default_factory=list)
    logits: dict[str, list[np.ndarray]] = field(default_factory=dict)
    unreadable: list[dict] = field(default_factory=list)
    mask_sources: dict[str, int] = field(default_factory=lambda: {"manifest": 0, "fixed_ellipses": 0})
    features: list[np.ndarray] = field(default_factory=list)  # penultimate features of the full images
    pooled: list[np.ndarray] = field(default_factory=list)  # the head's pooled features (the OOD input)
    gates: list[GateResult] = field(default_factory=list)  # the input gate of each decoded image

    def array(self, variant: str) -> np.ndarray:
        """(n, outputs) logits of one variant."""
        return np.concatenate(self.logits[variant])


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    reader: str = "auto",
    reader_options: dict | None = None,
    shortcut_checks: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    explanation_images: int = 24,
    gallery_per_class: int = 2,
    class_map: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    frontal_check: bool = True,
) -> dict:
    """Evaluate the run's bundle on its test split (or `data`), write the evaluation folder, return its JSON.

    The bundle is never changed: probabilities use its stored temperature (see ``covid-cxr calibrate``).
    `bootstrap` is the number of resamples for the intervals that need one (0 = none).
    `explanation_images` test images (0 = none) get the Grad-CAM quality scores: lesion energy share
    and pointing game where the data has lesion masks (phantoms), ROAD faithfulness on any data.
    `gallery_per_class` right and wrong predictions per class get a Grad-CAM overlay in the gallery.
    `class_map` renames the data's labels (``{"No_findings": "Normal", "Pneumonia": "-"}``, '-' drops);
    images of classes the model lacks are predicted too and counted in ``false_covid`` (the share of all
    non-COVID images called COVID), not in the other metrics.
    `progress(done, total)` follows the images through the model (and its shortcut-check copies).
    Every image gets the bundle's prediction set, OOD score and input gate (``reliability``, see
    :mod:`covid_cxr.evaluation.reliability`); the gate's `frontal_check` segments each image once
    (11 ms a 256 px image on a CPU core; the mask is kept at the image's size), a mask the lungs-hidden
    check then reuses.
    """
    run = RunDir(run_dir).require(RunDir(run_dir).manifest, RunDir(run_dir).bundle)
    predictor = load_bundle(run.bundle, backend="torch")
    info = predictor.bundle_info
    classes, output = predictor.classes, info.head.output
    run_manifest = _run_manifest(run)
    name, manifest, dataset = _dataset(run_manifest, classes, data, reader, reader_options or {}, class_map)
    preds = predict_logits(
        predictor, manifest, shortcut_checks, batch_size, progress, gate=True, frontal=frontal_check
    )
    if not preds.rows:
        raise DataError(f"{dataset['source']}: none of the {len(manifest)} images could be decoded")
    every = manifest.iloc[preds.rows].reset_index(drop=True)  # with the classes the model lacks (_y -1)
    known = every["_y"].to_numpy() >= 0
    evaluated = every[known].reset_index(drop=True)
    y = evaluated["_y"].to_numpy()
    probs_every = apply_temperature(preds.array("full"), info.temperature, output)
    probs = probs_every[known]
    raw = {v: apply_temperature(preds.array(v), 1.0, output)[known] for v in preds.logits}  # T = 1
    labels_every, y_every = every["label"].astype(str).to_numpy(), every["_y"].to_numpy()
    reliability, assessed = dataset_reliability(
        predictor.reliability, probs_every, np.concatenate(preds.pooled), preds.gates, labels_every, y_every
    )
    dataset.update(
        n_evaluated=len(evaluated),
        fingerprint=image_list_fingerprint(evaluated),
        unreadable=preds.unreadable,
        sources={str(k): int(v) for k, v in evaluated["source"].value_counts().items()},
        classes={str(k): int(v) for k, v in evaluated["label"].astype(str).value_counts().items()},
    )
    out = run.evaluation(name)
    calibration = info.calibration.model_dump() if info.calibration else None
    result = {
        "run": str(run.root),
        "model": {"arch": info.arch, "run_name": info.run.name},
        "output_dir": str(out),
        "dataset": dataset,
        "temperature": {"value": info.temperature, "calibration": calibration},
        "metrics": classification_summary(y, probs, classes),
        "intervals": _intervals(y, probs, classes, bootstrap, seed),
        "calibration": _calibration(y, raw["full"], probs, info.temperature),
        "reliability": reliability,
        "per_source": _per_source(evaluated, y, probs, classes),
        "false_covid": false_covid(labels_every, y_every, probs_every.argmax(axis=1), _covid(classes)),
        "source_predictability": _source_predictability(every, preds, seed),
        "shortcuts": None,
    }
    result["explanations"] = _explanation_scores(predictor, evaluated, explanation_images, seed)
    result["cam_in_lungs"] = cam_lung_share(predictor, evaluated, explanation_images, seed)
    if shortcut_checks:
        result["shortcuts"] = _shortcuts(run_manifest, evaluated, preds.mask_sources, raw, y, classes, data)
    result["figures"] = write_figures(result["metrics"], result["calibration"], out, f"{run.name} / {name}")
    result["gallery"] = write_gallery(predictor, evaluated, probs, out, gallery_per_class)
    rows = [a for a, k in zip(assessed, known, strict=True) if k]
    _write_predictions(out / PREDICTIONS_CSV, evaluated, probs, raw, classes, prediction_columns(rows))
    atomic_write_text(out / METRICS_JSON, json.dumps(result, indent=2) + "\n")
    log.info(
        "evaluated %s on %s: accuracy %.3f (%d images) -> %s",
        run.root,
        name,
        result["metrics"]["headline"]["accuracy"],
        len(evaluated),
        out,
    )
    return result


def image_list_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over the sorted file hashes of the evaluated images: equal iff the same images were used."""
    digests = sorted(frame["sha256"].astype(str)) if "sha256" in frame else sorted(frame["path"].astype(str))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def labelled_split(run: RunDir, classes: list[str], split: str) -> pd.DataFrame:
    """The rows of one split of the run's manifest, with the model's class index in `_y`."""
    manifest = _run_manifest(run)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DataError(f"{run.manifest}: the run has no {split!r} split")
    return _labelled(rows, classes)[0]


def match_classes(model_classes: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """Data label -> model class index, by name (any case) or alias; DataError when < 2 classes match."""
    index = {class_key(c): k for k, c in enumerate(model_classes)}
    mapping = {label: index[class_key(label)] for label in labels if class_key(label) in index}
    if len(set(mapping.values())) < 2:
        raise DataError(
            f"only {len(set(mapping.values()))} of the model's classes {list(model_classes)} match the "
            f"data's labels {sorted(labels)}; at least 2 are needed to evaluate (matching ignores case and "
            "knows aliases such as covid/COVID-19, normal/No finding, viral/Viral Pneumonia)"
        )
    return mapping


def class_key(name: str) -> str:
    """The canonical name a class spelling matches by: its alias group, else the normalised spelling."""
    norm = " ".join(re.sub(r"[_\-/]+", " ", str(name).lower()).split())
    return next((key for key, spellings in ALIASES.items() if norm in spellings), norm)


def predict_logits(
    predictor: Predictor,
    manifest: pd.DataFrame,
    variants: bool,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    gate: bool = False,
    frontal: bool = True,
) -> Predictions:
    """Logits of every image, and with `variants` of its lungs-hidden and border-cropped copies.

    Each image is decoded once; undecodable ones are recorded in ``unreadable``, not raised.
    `progress(done, total)` is called after each image. With `gate` each image's input gate is recorded,
    with the `frontal` check from one segmentation that the lungs-hidden copy reuses (without `frontal`
    the check runs only where that copy needs the segmenter anyway).
    """
    names = VARIANTS if variants else VARIANTS[:1]
    preds = Predictions(logits={n: [] for n in names})
    preds.mask_sources.setdefault("predicted", 0)
    pending: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    masks = manifest["lung_mask"].tolist() if "lung_mask" in manifest else [None] * len(manifest)
    for pos, (path, mask_path) in enumerate(zip(manifest["path"].astype(str), masks, strict=True)):
        try:
            image = load_image(path)
        except ImageError as exc:
            preds.unreadable.append({"path": exc.path, "reason": exc.reason})
            continue
        preds.rows.append(pos)
        has_mask = isinstance(mask_path, str) and bool(mask_path)
        lungs = segment(image) if gate and (frontal or (variants and not has_mask)) else None
        if gate:
            preds.gates.append(check_image(image, predictor.preprocess.size, lungs=lungs))
        for variant, img in _variants(image, mask_path, names, preds.mask_sources, lungs).items():
            pending[variant].append(preprocess(img, predictor.preprocess))
        if len(pending["full"]) == batch_size:
            _flush(predictor, pending, preds)
        if progress is not None:
            progress(pos + 1, len(manifest))
    _flush(predictor, pending, preds)
    return preds


def _variants(
    image: np.ndarray,
    mask_path: object,
    names: Sequence[str],
    counts: dict[str, int],
    lungs: np.ndarray | None = None,
) -> dict:
    """The image and, when asked, its lungs-hidden and border-cropped copies (`lungs`: its segmentation)."""
    out = {"full": image}
    if "lungs_hidden" in names:
        out["lungs_hidden"] = hide_lungs(image, _lung_mask(image, mask_path, counts, lungs))
        out["border_crop"] = crop_border(image)
    return out


def _lung_mask(
    image: np.ndarray, mask_path: object, counts: dict[str, int], lungs: np.ndarray | None = None
) -> np.ndarray:
    """The manifest's lung mask when readable, else the predicted one when plausible, else the ellipses."""
    if isinstance(mask_path, str) and mask_path:
        try:
            mask = lung_mask(image, mask_path)
            counts["manifest"] += 1
            return mask
        except ImageError as exc:
            log.warning("lung mask %s unusable (%s): predicting one", exc.path, exc.reason)
    if (predicted := predicted_lung_mask(image, lungs)) is not None:
        counts["predicted"] += 1
        return predicted
    counts["fixed_ellipses"] += 1
    return lung_mask(image)


def _flush(predictor: Predictor, pending: dict[str, list[torch.Tensor]], preds: Predictions) -> None:
    """Run the model on the pending batch of every variant and empty it."""
    for variant, tensors in pending.items():
        if tensors:
            model = predictor.model
            with torch.inference_mode(), penultimate(model) as captured, pooled_features(model) as pooled:
                preds.logits[variant].append(model(torch.stack(tensors)).float().numpy())
            if variant == "full":
                preds.pooled.append(pooled[-1])
                if captured:
                    preds.features.append(captured[-1])
            tensors.clear()


def _covid(classes: Sequence[str]) -> int | None:
    """The model's COVID class index (by name or alias), or None."""
    return next((k for k, c in enumerate(classes) if class_key(c) == "covid"), None)


def _source_predictability(every: pd.DataFrame, preds: Predictions, seed: int) -> dict:
    """Source predictability from the penultimate features of every evaluated image, within each label."""
    features = np.concatenate(preds.features) if preds.features else np.zeros((len(every), 0))
    patients = every["patient_id"].astype(object).where(every["patient_id"].notna(), None)
    groups = np.array([p if p not in (None, "") else f"row{i}" for i, p in enumerate(patients)], dtype=object)
    return source_predictability(
        features, every["source"].astype(str).to_numpy(), every["label"].astype(str).to_numpy(), groups, seed
    )


def _run_manifest(run: RunDir) -> pd.DataFrame:
    """The run's manifest.csv with splits; DataError naming the file when missing."""
    manifest = load_manifest(run.require().manifest)
    if "split" not in manifest:
        raise DataError(f"{run.manifest}: no 'split' column")
    return manifest


def _dataset(
    run_manifest: pd.DataFrame,
    classes: list[str],
    data: str | Path | None,
    reader: str,
    options: dict,
    class_map: dict[str, str] | None = None,
) -> tuple[str, pd.DataFrame, dict]:
    """(name, manifest with class index column `_y`, -1 for a class the model lacks, description)."""
    if data is None:
        test = run_manifest[run_manifest["split"] == "test"]
        if test.empty:
            raise DataError("the run has no test split; evaluate it on another dataset (data=...)")
        frame, mapping = _labelled(test, classes)
        info = {"name": TEST, "source": "the run's test split", "n_images": len(test), "external": False}
        return TEST, frame, {**info, "class_matching": mapping, "excluded": {}, "reader_problems": 0}
    result = read_source(data, reader=reader, **options)
    path = Path(data)
    stem = path.stem if path.is_file() else path.resolve().name
    name = dataset_slug(stem)
    name = f"{name}-data" if name == TEST else name
    mapped = apply_class_map(result.manifest, class_map or {}, name)
    frame, mapping = _labelled(mapped, classes)
    labels = mapped["label"].astype(str)
    outside = mapped[~labels.isin(mapping)].assign(_y=-1)
    frame = pd.concat([frame, outside], ignore_index=True)
    excluded = {str(k): int(v) for k, v in labels[~labels.isin(mapping)].value_counts().items()}
    handling = class_handling(result.manifest["label"].astype(str), class_map or {}, mapping, _covid(classes))
    for label, action in handling.items():
        log.info("%s: class %r: %s", name, label, action)
    info = {
        "name": name,
        "external": True,
        "source": str(path.resolve()),
        "n_images": len(result.manifest),
        "class_matching": mapping,
        "class_map": dict(class_map or {}),
        "class_handling": handling,
        "excluded": excluded,
        "reader_problems": len(result.problems),
    }
    return name, frame, info


def class_handling(
    labels: pd.Series, class_map: dict[str, str], matching: dict[str, str], covid: int | None
) -> dict[str, str]:
    """What evaluate did with each label of the data, in plain words (metrics.json and the CLI)."""
    out = {}
    for label, n in labels.value_counts().sort_index().items():
        target = class_map.get(label, label)
        how = f"--map to {target!r}, " if target != label and target != DROP else ""
        if target == DROP:
            out[label] = f"{n} images dropped (--map {label}=-)"
        elif target in matching:
            out[label] = f"{n} images, {how}model class {matching[target]!r}: in every metric"
        else:
            share = "; counted in the share of non-COVID images called COVID" if covid is not None else ""
            out[label] = (
                f"{n} images, {how}not a model class: predicted, left out of the class metrics{share}"
            )
    return out


def _labelled(manifest: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows whose label matches a model class, with its index in `_y`; and label -> class name."""
    labels = manifest["label"].astype(str)
    mapping = match_classes(classes, sorted(labels.unique()))
    kept = manifest[labels.isin(mapping)].reset_index(drop=True)
    kept["_y"] = kept["label"].astype(str).map(mapping).astype(int)
    return kept, {label: classes[k] for label, k in mapping.items()}


def _intervals(y: np.ndarray, probs: np.ndarray, classes: list[str], n: int, seed: int) -> dict:
    """95 % intervals of the headline figures, each with its method (see intervals.py; {} when n is 0)."""
    if n <= 0:
        return {}
    level = 0.95
    values = headline_intervals(y, probs, classes, n_resamples=n, seed=seed, level=level, n_bins=N_BINS)
    return {
        "n_resamples": n,
        "seed": seed,
        "level": level,
        "values": {name: {**v, "level": level} for name, v in values.items()},
    }


def _explanation_scores(predictor: Predictor, evaluated: pd.DataFrame, n: int, seed: int) -> dict | None:
    """Grad-CAM quality on up to `n` images: lesion-mask scores (when masks exist) and ROAD faithfulness."""
    from covid_cxr.explain.quality import explanation_quality, faithfulness

    if n <= 0 or evaluated.empty:
        return None
    sample = evaluated.sample(n=min(n, len(evaluated)), random_state=seed).reset_index(drop=True)
    images = [load_image(p) for p in sample["path"]]
    scores: dict = {"images": len(images), "faithfulness_road": faithfulness(predictor, images, seed=seed)}
    if "lesion_mask" in sample and sample["lesion_mask"].notna().all():
        masks = [load_image(p) > 127 for p in sample["lesion_mask"]]
        targets = [int(v) for v in sample["_y"]]
        try:
            scores["lesion"] = explanation_quality(predictor, images, masks, targets=targets)
        except DataError as exc:  # no lesion pixel in the sample (e.g. only normal images)
            scores["lesion"] = {"skipped": str(exc)}
    log.info("Grad-CAM ROAD faithfulness on %d images: %.3f", len(images), scores["faithfulness_road"])
    return scores


def _calibration(y: np.ndarray, raw: np.ndarray, probs: np.ndarray, temperature: float) -> dict:
    """ECE, NLL and reliability bins without (`raw`, T = 1) and with the temperature (`probs`)."""
    return {
        "temperature": temperature,
        "n_bins": N_BINS,
        "ece_before": expected_calibration_error(y, raw, N_BINS),
        "ece_after": expected_calibration_error(y, probs, N_BINS),
        "nll_before": negative_log_likelihood(y, raw),
        "nll_after": negative_log_likelihood(y, probs),
        "reliability_before": reliability_bins(y, raw, N_BINS),
        "reliability_after": reliability_bins(y, probs, N_BINS),
    }


def _per_source(evaluated: pd.DataFrame, y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict | None:
    """Headline metrics per source when the data has several sources."""
    sources = evaluated["source"].astype(str).to_numpy()
    if len(set(sources)) < 2:
        return None
    return {s: headline(y[sources == s], probs[sources == s], classes) for s in sorted(set(sources))}


def _shortcuts(
    run_manifest: pd.DataFrame,
    evaluated: pd.DataFrame,
    mask_sources: dict[str, int],
    probs: dict[str, np.ndarray],
    y: np.ndarray,
    classes: list[str],
    data: str | Path | None,
) -> dict:
    """The three shortcut checks (confounding of the run's data, and of `data` when given) and the flags."""
    checks = {"confounding": label_source_confounding(run_manifest)}
    if data is not None:
        checks["confounding_evaluated"] = label_source_confounding(evaluated)
    checks["lungs_hidden"] = {
        **lungs_hidden_check(y, probs["full"], probs["lungs_hidden"], classes),
        "lung_masks": dict(mask_sources),
    }
    checks["border_crop"] = border_crop_check(y, probs["full"], probs["border_crop"], classes)
    checks["flags"] = [c["verdict"] for c in checks.values() if c["flag"]]
    return checks


def _write_predictions(
    path: Path,
    evaluated: pd.DataFrame,
    probs: np.ndarray,
    raw: dict[str, np.ndarray],
    classes: list[str],
    reliability: dict[str, list],
) -> None:
    """predictions.csv: path, source, label, true and predicted class, probabilities, variant predictions,
    then the reliability columns (see :func:`covid_cxr.evaluation.reliability.prediction_columns`)."""
    frame = pd.DataFrame(
        {
            "path": evaluated["path"].astype(str),
            "source": evaluated["source"].astype(str),
            "label": evaluated["label"].astype(str),
            "true_class": [classes[k] for k in evaluated["_y"]],
            "predicted": [classes[k] for k in probs.argmax(axis=1)],
        }
    )
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = probs[:, k]
    for variant in VARIANTS[1:]:
        if variant in raw:
            frame[f"predicted_{variant}"] = [classes[k] for k in raw[variant].argmax(axis=1)]
    for column, values in reliability.items():
        frame[column] = values
    atomic_write_text(path, frame.to_csv(index=False))
