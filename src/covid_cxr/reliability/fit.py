"""The reliability step: fit the OOD detector and the conformal threshold and store them in the bundle.

Run after training and calibration (``reliability.fit``, on by default) or by ``covid-cxr reliability
RUN``. The detector reads the training split's features, its threshold and the conformal q-hat the
validation split's; evaluation never changes the bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path

from covid_cxr.bundle import load_bundle, store_reliability
from covid_cxr.bundle_info import OOD_FORMAT, BundleInfo, ConformalInfo, OodInfo
from covid_cxr.config import ReliabilityConfig
from covid_cxr.errors import DataError
from covid_cxr.evaluation.calibration import apply_temperature
from covid_cxr.reliability.conformal import fit_threshold, prediction_sets
from covid_cxr.reliability.features import image_features
from covid_cxr.reliability.ood import fit_detector, threshold
from covid_cxr.run_dir import RunDir

log = logging.getLogger(__name__)


def fit_reliability(
    run_dir: str | Path, cfg: ReliabilityConfig | None = None, batch_size: int = 32
) -> BundleInfo:
    """Fit both on the run's splits and rewrite its bundle with them; DataError when a split is empty."""
    from covid_cxr.evaluation.evaluate import labelled_split

    cfg = cfg or ReliabilityConfig()
    run = RunDir(run_dir).require(RunDir(run_dir).manifest, RunDir(run_dir).bundle)
    predictor = load_bundle(run.bundle, backend="torch")
    info = predictor.bundle_info
    split = {s: labelled_split(run, predictor.classes, s) for s in ("train", "val")}
    found = {
        s: image_features(predictor.model, frame["path"].astype(str).tolist(), info.preprocess, batch_size)
        for s, frame in split.items()
    }
    if not found["train"][0] or not found["val"][0]:
        raise DataError(f"{run.manifest}: no decodable train or val image to fit the OOD detector on")
    y = {s: split[s]["_y"].to_numpy()[found[s][0]] for s in split}
    detector = fit_detector(found["train"][1], y["train"], cfg.ood_method)
    ood = OodInfo(
        format=OOD_FORMAT,
        method=cfg.ood_method,
        quantile=cfg.ood_quantile,
        threshold=threshold(detector.score(found["val"][1]), cfg.ood_quantile),
        n_train=len(y["train"]),
        n_val=len(y["val"]),
    )
    probs = apply_temperature(found["val"][2], info.temperature, info.head.output)
    qhat = fit_threshold(probs, y["val"], cfg.coverage, cfg.conformal_method)
    sets = prediction_sets(probs, qhat, cfg.conformal_method)
    conformal = ConformalInfo(
        method=cfg.conformal_method,
        coverage=cfg.coverage,
        qhat=qhat,
        temperature=info.temperature,
        n_val=len(y["val"]),
        val_mean_set_size=float(sets.sum(axis=1).mean()),
    )
    stored = store_reliability(run.bundle, ood, detector.arrays, conformal)
    log.info("%s", describe(stored))
    return stored


def describe(info: BundleInfo) -> str:
    """One line for the terminal: the OOD threshold and the conformal q-hat, or that they are missing."""
    if info.ood is None:
        return "reliability: no OOD detector or conformal sets in this bundle (covid-cxr reliability RUN)"
    text = (
        f"reliability: {info.ood.method} OOD threshold {info.ood.threshold:.4g} "
        f"({info.ood.quantile:.0%} of {info.ood.n_val} validation images)"
    )
    if info.conformal is None:
        return text + "; no conformal sets"
    c = info.conformal
    return text + (
        f"; {c.method.upper()} sets at {c.coverage:.0%} coverage, q-hat {c.qhat:.4g}, "
        f"mean size {c.val_mean_set_size:.2f} on validation"
    )
