"""Train one run end to end: source -> checks -> splits -> cache -> DataModule -> Lightning -> bundle.

The run directory (``runs/<name>/``) receives ``config.yaml`` (fully resolved), ``manifest.csv``
(with splits), ``checks.json``, ``checkpoints/{best,last}.ckpt``, ``metrics.csv`` (one row per
epoch), ``curves.png``, ``test_metrics.json`` and ``bundle/``; every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from covid_cxr.bundle import write_bundle
from covid_cxr.config import RunConfig, SourceConfig
from covid_cxr.data.augment import TensorAugment
from covid_cxr.data.cache import ImageCache
from covid_cxr.data.checks import duplicate_group_ids, run_checks, save_report, usable_manifest
from covid_cxr.data.datamodule import CxrDataModule
from covid_cxr.data.manifest import load_manifest, save_manifest
from covid_cxr.data.preprocess import dataset_stats, normalize
from covid_cxr.data.sources import data_sources, holdout_split, read_sources, source_name
from covid_cxr.data.splits import SPLITS, assert_no_leakage, class_weights, kfold, split_manifest, undersample
from covid_cxr.errors import DataError, TrainingInterrupted
from covid_cxr.io import atomic_write_text
from covid_cxr.models.module import CxrModule
from covid_cxr.models.zoo import build_from_config
from covid_cxr.run_dir import RunDir, RunError
from covid_cxr.training.callbacks import AtomicCheckpointIO, EpochMetricsCsv
from covid_cxr.training.curves import plot_curves
from covid_cxr.training.features import backbone_features, feature_device, use_cached_features
from covid_cxr.training.presets import dump_config
from covid_cxr.training.progress import EpochBar, EpochSummary, StopOnInterrupt

log = logging.getLogger(__name__)

BEST, LAST = "best", "last"


@dataclass
class RunResult:
    """What a run produced: its folder, test metrics, best checkpoint, bundle (None under k-fold)."""

    out: Path
    metrics: dict
    best_checkpoint: Path | None = None
    bundle: Path | None = None
    folds: list[RunResult] | None = None


@dataclass
class Stage:
    """Everything Trainer.fit needs, built from a split manifest and a config."""

    cfg: RunConfig
    classes: list[str]
    model: nn.Module
    module: CxrModule
    datamodule: CxrDataModule
    has_test: bool


def train_run(
    cfg: RunConfig,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    folds: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
    overwrite: bool = False,
) -> RunResult:
    """Train `cfg` on `data` (default cfg.data.source) into run folder `out` (default runs/<name>).

    `resume` continues from checkpoints/last.ckpt (and the run's saved manifest.csv); `folds` runs
    k-fold cross-validation over train+val, each fold in out/fold-<i>/, summarised in cv_metrics.json.
    A folder that already holds a run is refused (RunError) unless `resume` or `overwrite` is given;
    `overwrite` first removes what covid-cxr wrote there. config.yaml records the data source.
    """
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    _claim(RunDir(run_dir), resume, overwrite)
    if data is not None:
        cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"source": str(Path(data).resolve())})}
        )
    cfg = _resolved_sources(cfg)
    manifest = _saved_manifest(run_dir) if resume else None
    if manifest is None:
        manifest = prepare_manifest(cfg, data, run_dir)
    if folds:
        return cross_validate(cfg, manifest, run_dir, folds, resume, progress, cache_dir, callbacks)
    return fit_split(cfg, manifest, run_dir, resume, progress, cache_dir, callbacks)


def prepare_manifest(cfg: RunConfig, data: str | Path | None, out: Path) -> pd.DataFrame:
    """Read and map the sources, write checks.json, drop unusable rows and other classes, split, check leaks.

    Several sources (data.sources) are merged; their duplicates, found by the checks on the merged
    manifest, stay in one split. data.holdout_source makes one whole source the test split.
    """
    specs = data_sources(cfg.data if data is None else cfg.data.model_copy(update={"source": str(data)}))
    source = ", ".join(s.path for s in specs)
    result = read_sources(specs)
    report = run_checks(result.manifest, result.problems)
    checks = RunDir(out).checks
    save_report(report, checks)
    if not report.usable:
        raise DataError(f"{source}: cannot train: {report.unusable_reason} (see {checks})")
    manifest = usable_manifest(result.manifest, report)
    manifest = select_classes(manifest.assign(_dup=duplicate_group_ids(manifest, report)), cfg.data.classes)
    if cfg.data.balance == "undersample":
        manifest = undersample(manifest, cfg.data.seed)
    d = cfg.data
    if d.holdout_source is not None:
        split = holdout_split(manifest.drop(columns="_dup"), d.holdout_source, d, manifest["_dup"].to_numpy())
        assert_no_leakage(split, patients=d.group_by_patient)
        return split
    split = split_manifest(
        manifest.drop(columns="_dup"),
        d.test_fraction,
        d.val_fraction,
        d.group_by_patient,
        d.seed,
        d.test_per_class,
        d.use_given_split,
        groups=manifest["_dup"].to_numpy(),
    )
    assert_no_leakage(split, patients=d.group_by_patient)
    return split


def select_classes(manifest: pd.DataFrame, classes: Sequence[str] | None) -> pd.DataFrame:
    """Keep only the rows of `classes` (all when None); DataError when a class has no images."""
    if classes is None:
        return manifest
    found = set(manifest["label"].astype(str))
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"data.classes {missing} have no usable images; the data has {sorted(found)}")
    kept = manifest[manifest["label"].astype(str).isin(classes)].reset_index(drop=True)
    if len(kept) < len(manifest):
        log.info("kept classes %s: %d of %d images", list(classes), len(kept), len(manifest))
    return kept


def fit_split(
    cfg: RunConfig,
    manifest: pd.DataFrame,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> RunResult:
    """Train on a split manifest, test the best checkpoint, write the run folder and bundle, calibrate."""
    checkpoint = _resume_checkpoint(out) if resume else None
    stage = build_stage(cfg, manifest, cache_dir)
    _write_inputs(stage.cfg, manifest, out)
    trainer = make_trainer(stage.cfg, out, progress, callbacks)
    run = RunDir(out)
    best = run.best_checkpoint
    try:
        trainer.fit(stage.module, datamodule=stage.datamodule, ckpt_path=checkpoint)
    except TrainingInterrupted as stop:
        stop.bundle = interrupted_bundle(stage, manifest, best, stop) if trainer.is_global_zero else None
        raise
    metrics = evaluate_best(trainer, stage, best)
    if not trainer.is_global_zero:
        return RunResult(out, metrics, best)
    atomic_write_text(run.test_metrics, json.dumps(metrics, indent=2) + "\n")
    plot_curves(run.metrics_csv, run.curves, title=stage.cfg.name)
    bundle = _write_bundle(stage, manifest, metrics, run.bundle)
    if stage.cfg.train.calibrate and len(stage.datamodule.splits["val"]):
        from covid_cxr.evaluation.calibrate import calibrate_run

        calibrate_run(out)
    if stage.cfg.reliability.fit and len(stage.datamodule.splits["val"]):
        from covid_cxr.reliability.fit import fit_reliability

        fit_reliability(out, stage.cfg.reliability)
    log.info("run %s: test accuracy %s", out, metrics.get("test_accuracy"))
    return RunResult(out, metrics, best, bundle)


def build_stage(cfg: RunConfig, manifest: pd.DataFrame, cache_dir: str | Path | None = None) -> Stage:
    """Cache the images, resolve dataset stats, seed, build the model, the module and the DataModule."""
    classes = list(cfg.data.classes or sorted(manifest["label"].astype(str).unique()))
    labels = manifest["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    splits = {name: np.flatnonzero(manifest["split"].to_numpy() == name) for name in SPLITS}
    images = ImageCache(cache_dir).load_or_build(manifest, cfg.preprocess)
    cfg = resolve_preprocess(cfg, images, splits["train"])
    L.seed_everything(cfg.train.seed, workers=True)
    model = build_from_config(cfg, len(classes)).to(memory_format=torch.channels_last)
    weights = _class_weights(cfg, manifest, splits["train"], classes)
    loaders = dict(
        labels=labels,
        splits=splits,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.train.num_workers,
        seed=cfg.train.seed,
        balance_sampler=cfg.data.balance in ("sampler", "source_class"),
        strata=_sampler_cells(cfg, manifest),
    )
    module, datamodule = _module_and_data(cfg, model, images, weights, loaders)
    return Stage(cfg, classes, model, module, datamodule, has_test=len(splits["test"]) > 0)


def _module_and_data(
    cfg: RunConfig, model: nn.Module, images: np.ndarray, weights: list | None, loaders: dict
) -> tuple[CxrModule, CxrDataModule]:
    """The head on cached backbone features (frozen, unaugmented runs) or the full model on images."""
    if use_cached_features(cfg):
        log.info("training head on cached backbone features")
        device = feature_device(cfg.train.accelerator)
        features = backbone_features(model.backbone, images, cfg.preprocess, cfg.train.batch_size, device)
        head = CxrModule(model.head, cfg.optim, cfg.train.reduce_lr, weights)  # trains model.head in place
        return head, CxrDataModule(features, **loaders)
    log.info("training full model")
    if cfg.train.compile:
        model.compile()  # in place: state_dict keys, checkpoints and the bundle stay as without it
    augment = TensorAugment(cfg.augment, cfg.preprocess) if cfg.augment.active else None
    prepare = partial(normalize, spec=cfg.preprocess)
    datamodule = CxrDataModule(images, prepare=prepare, augment=augment, **loaders)
    return CxrModule(model, cfg.optim, cfg.train.reduce_lr, weights), datamodule


def resolve_preprocess(cfg: RunConfig, images: np.ndarray, train_rows: np.ndarray) -> RunConfig:
    """The config with `dataset` normalisation's mean/std measured on the train split."""
    if cfg.preprocess.normalize != "dataset":
        if cfg.augment.featurewise_center or cfg.augment.featurewise_std_normalization:
            log.warning(
                "augment.featurewise_* needs preprocess.normalize: dataset; using %s",
                cfg.preprocess.normalize,
            )
        return cfg
    mean, std = dataset_stats(images[train_rows])
    log.info("train split mean %s, std %s", [round(m, 4) for m in mean], [round(s, 4) for s in std])
    spec = cfg.preprocess.model_copy(update={"mean": mean, "std": std})
    return cfg.model_copy(update={"preprocess": spec})


def make_trainer(cfg: RunConfig, out: Path, progress: bool, extra: Sequence[L.Callback] = ()) -> L.Trainer:
    """A Trainer with the run's callbacks, CSV logs in out/logs/version_<n> and atomic checkpoints."""
    t = cfg.train
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        benchmark=True,  # cuDNN autotuning: every batch has the one spec size
        callbacks=[*run_callbacks(cfg, out, progress), *extra],
        logger=CSVLogger(out, name="logs"),
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=_show_bar(progress),
        enable_model_summary=progress,
        log_every_n_steps=1,
    )


def run_callbacks(cfg: RunConfig, out: Path, progress: bool) -> list[L.Callback]:
    """metrics.csv, best/last checkpoints, LR monitor, optional early stopping and rich progress bar."""
    folder, ck = RunDir(out).checkpoints, cfg.train.checkpoint
    callbacks: list[L.Callback] = [
        EpochMetricsCsv(RunDir(out).metrics_csv),
        ModelCheckpoint(
            dirpath=folder,
            filename=BEST,
            monitor=ck.monitor,
            mode=ck.mode,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        ModelCheckpoint(dirpath=folder, filename=LAST, save_top_k=1, enable_version_counter=False),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if (es := cfg.train.early_stopping) is not None:
        callbacks.append(
            EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=es.mode)
        )
    callbacks.append(EpochSummary(ck.monitor, ck.mode))
    if progress:
        callbacks.append(ModelSummary())  # the plain summary: logged at INFO, which the CLI shows with -v
    if _show_bar(progress):
        callbacks.append(EpochBar())
    return [*callbacks, StopOnInterrupt()]  # last: the bar is stopped before it raises


def _show_bar(progress: bool) -> bool:
    """A progress bar only on a terminal: in logs, CI and `make demo` the epoch lines suffice."""
    return progress and sys.stdout.isatty()


def evaluate_best(trainer: L.Trainer, stage: Stage, best: Path) -> dict:
    """Load the best checkpoint into the module; its validation and test loss and accuracy."""
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    stage.module.load_state_dict(state)
    metrics = {"checkpoint": f"{best.parent.name}/{best.name}", "epochs": trainer.current_epoch}
    metrics.update(trainer.validate(stage.module, datamodule=stage.datamodule, verbose=False)[0])
    metrics["n_val"] = len(stage.datamodule.splits["val"])
    if stage.has_test:
        metrics.update(trainer.test(stage.module, datamodule=stage.datamodule, verbose=False)[0])
    metrics["n_test"] = len(stage.datamodule.splits["test"])
    return metrics


def interrupted_bundle(
    stage: Stage, manifest: pd.DataFrame, best: Path, stop: TrainingInterrupted
) -> Path | None:
    """The bundle of the best checkpoint so far, marked interrupted; None when no epoch finished."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C from here on
    if not best.is_file():
        log.warning("interrupted before the first epoch finished: no checkpoint, no bundle")
        return None
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    stage.module.load_state_dict(checkpoint["state_dict"])
    metrics = {
        "checkpoint": f"{best.parent.name}/{best.name}",
        "status": "interrupted",
        "interrupted": True,
        "interrupted_at_epoch": stop.epoch,
        "max_epochs": stop.max_epochs,
        "best_epoch": int(checkpoint["epoch"]) + 1,
    }
    return _write_bundle(stage, manifest, metrics, best.parent.parent / "bundle")


def cross_validate(
    cfg: RunConfig,
    manifest: pd.DataFrame,
    out: Path,
    k: int,
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> RunResult:
    """k-fold over train+val (test kept aside): one run per fold in out/fold-<i>/, and cv_metrics.json."""
    save_manifest(manifest, RunDir(out).manifest)
    atomic_write_text(RunDir(out).config, dump_config(cfg))
    runs = []
    for i, fold in enumerate(fold_manifests(manifest, k, cfg), start=1):
        log.info("fold %d/%d", i, k)
        runs.append(fit_split(cfg, fold, RunDir(out).fold(i).root, resume, progress, cache_dir, callbacks))
    summary = cv_summary([{"fold": i, **r.metrics} for i, r in enumerate(runs, start=1)])
    atomic_write_text(RunDir(out).cv_metrics, json.dumps(summary, indent=2) + "\n")
    return RunResult(out, summary, folds=runs)


def fold_manifests(manifest: pd.DataFrame, k: int, cfg: RunConfig) -> list[pd.DataFrame]:
    """One copy of the manifest per fold, its train+val rows re-split; test rows unchanged."""
    pool = np.flatnonzero(manifest["split"].to_numpy() != "test")
    folds = kfold(manifest.iloc[pool], k, cfg.data.seed, cfg.data.group_by_patient)
    out = []
    for train, val in folds:
        split = manifest["split"].to_numpy(dtype=object).copy()
        split[pool[train]], split[pool[val]] = "train", "val"
        fold = manifest.assign(split=split)
        assert_no_leakage(fold, patients=cfg.data.group_by_patient)
        out.append(fold)
    return out


def cv_summary(fold_metrics: list[dict]) -> dict:
    """Per-fold metrics and, for every numeric one, the mean and standard deviation across folds."""
    keys = [k for k, v in fold_metrics[0].items() if isinstance(v, float)]
    summary = {}
    for key in keys:
        values = np.array([m[key] for m in fold_metrics], dtype=float)
        summary[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    return {"folds": fold_metrics, "summary": summary}


def data_fingerprint(manifest: pd.DataFrame) -> str:
    """SHA-256 over the sorted (file hash, label, split) rows: which data trained the model."""
    rows = sorted(
        f"{s}\t{lab}\t{sp}"
        for s, lab, sp in zip(manifest["sha256"], manifest["label"], manifest["split"], strict=True)
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _write_bundle(stage: Stage, manifest: pd.DataFrame, metrics: dict, folder: Path) -> Path:
    """The full model as the run's bundle (a head trained on cached features is `stage.model.head` itself)."""
    model = stage.model.to(memory_format=torch.contiguous_format).cpu().eval()
    return write_bundle(
        folder,
        model,
        stage.cfg,
        stage.classes,
        stage.cfg.preprocess,
        metrics,
        data_fingerprint(manifest),
        training_data=training_data(stage.cfg, manifest),
    )


def training_data(cfg: RunConfig, manifest: pd.DataFrame) -> list[dict]:
    """What trained the model (bundle.json): each source, its reader, options, map, images per split/class."""
    specs = data_sources(cfg.data)
    names = manifest["source"].astype(str)
    if len(specs) == 1:
        return [{**_source_entry(specs[0], manifest), "sources": sorted(names.unique())}]
    return [{"name": source_name(s), **_source_entry(s, manifest[names == source_name(s)])} for s in specs]


def _source_entry(spec: SourceConfig, rows: pd.DataFrame) -> dict:
    """One source's path, reader, options, class map and images per split and class."""
    counts = rows.groupby(["split", "label"]).size()
    splits = counts.index.get_level_values(0).unique()
    per_split = {split: {str(k): int(v) for k, v in counts[split].items()} for split in splits}
    return {
        "path": spec.path,
        "reader": spec.reader,
        "options": dict(spec.options),
        "map": dict(spec.map),
        "images": per_split,
    }


def _resolved_sources(cfg: RunConfig) -> RunConfig:
    """The config with every data.sources path made absolute, so config.yaml records where the data was."""
    if not cfg.data.sources:
        return cfg
    sources = [
        s.model_copy(update={"path": str(Path(s.path).expanduser().resolve())}) for s in cfg.data.sources
    ]
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": sources})})


def _sampler_cells(cfg: RunConfig, manifest: pd.DataFrame) -> np.ndarray | None:
    """With data.balance source_class, one integer per (source, class) cell for the balanced sampler."""
    if cfg.data.balance != "source_class":
        return None
    cells = manifest["source"].astype(str) + "\t" + manifest["label"].astype(str)
    log.info("source_class balancing over %d (source, class) cells", cells.nunique())
    return pd.factorize(cells)[0]


def _class_weights(
    cfg: RunConfig, manifest: pd.DataFrame, train_rows: np.ndarray, classes: list[str]
) -> list | None:
    """Balanced per-class loss weights from the train split when data.balance is class_weights."""
    if cfg.data.balance != "class_weights":
        return None
    weights = class_weights(manifest["label"].iloc[train_rows], classes)
    log.info("class weights %s", weights)
    return [weights[c] for c in classes]


def _write_inputs(cfg: RunConfig, manifest: pd.DataFrame, out: Path) -> None:
    """config.yaml (resolved) and manifest.csv (with splits)."""
    atomic_write_text(RunDir(out).config, dump_config(cfg))
    save_manifest(manifest, RunDir(out).manifest)


def _saved_manifest(out: Path) -> pd.DataFrame | None:
    """The split manifest of the run being resumed, so it trains on exactly the same splits."""
    path = RunDir(out).manifest
    if not path.is_file():
        log.warning("no %s to resume from: reading the source again", path)
        return None
    return load_manifest(path)


def _resume_checkpoint(out: Path) -> str | None:
    """checkpoints/last.ckpt, or None (with a warning) when the run never finished an epoch."""
    last = RunDir(out).last_checkpoint
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    log.warning("no %s: starting from scratch", last)
    return None


def _claim(run: RunDir, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds a run unless asked to resume or overwrite it; clear it for overwrite."""
    existing = run.holds_run()
    if not existing or resume:
        return
    if not overwrite:
        raise RunError(
            f"{run.root} already holds a run ({', '.join(existing)}): continue it with --resume, "
            "replace it with --overwrite, or choose another --out"
        )
    log.warning("--overwrite: removing the earlier run in %s", run.root)
    run.clear()
