"""The calibration step: fit a temperature on the validation split and keep it only when it helps.

Run after training (``train.calibrate``, on by default) or by ``covid-cxr calibrate RUN``; ``reset``
puts T = 1 back. The decision and the validation ECE and NLL before and after are recorded in
bundle.json (``calibration``); the ONNX graph is re-exported with the kept temperature. Evaluation
never changes the bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from covid_cxr.bundle import load_bundle, retemper_bundle
from covid_cxr.bundle_info import BundleInfo, Calibration
from covid_cxr.evaluation.calibration import (
    T_BOUNDS,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from covid_cxr.run_dir import RunDir

log = logging.getLogger(__name__)

N_BINS = 15


def calibrate_run(run_dir: str | Path, reset: bool = False, batch_size: int = 32) -> BundleInfo:
    """Fit T on the run's validation split; store it when it lowers the validation NLL, else keep T = 1."""
    from covid_cxr.evaluation.evaluate import labelled_split, predict_logits

    run = RunDir(run_dir).require(RunDir(run_dir).bundle)
    predictor = load_bundle(run.bundle, backend="torch")
    if reset:
        record = Calibration(reason="reset by the user: T = 1")
        return _store(run, 1.0, record)
    frame = labelled_split(run, predictor.classes, "val")
    preds = predict_logits(predictor, frame, False, batch_size)
    if not preds.rows:
        return _store(run, 1.0, Calibration(reason="no validation image could be decoded; T = 1"))
    logits, y = preds.array("full"), frame["_y"].to_numpy()[preds.rows]
    return _store(run, *decide(logits, y, predictor.bundle_info.head.output))


def decide(logits: np.ndarray, y: np.ndarray, output: str) -> tuple[float, Calibration]:
    """(temperature to use, the record): the fitted T when it lowers the validation NLL, else 1."""
    fitted = fit_temperature(logits, y, output)
    before, after = apply_temperature(logits, 1.0, output), apply_temperature(logits, fitted, output)
    record = Calibration(
        n_val=len(y),
        fitted_temperature=fitted,
        val_nll_before=negative_log_likelihood(y, before),
        val_nll_after=negative_log_likelihood(y, after),
        val_ece_before=expected_calibration_error(y, before, N_BINS),
        val_ece_after=expected_calibration_error(y, after, N_BINS),
    )
    at_bound = not T_BOUNDS[0] * 1.05 < fitted < T_BOUNDS[1] / 1.05
    if bool((before.argmax(axis=1) == y).all()) and fitted < 1:
        record.reason = (
            f"every validation image is classified correctly, so the NLL keeps falling as T shrinks "
            f"(fit T = {fitted:.3g}): sharpening cannot be calibrated on this split; T = 1 kept"
        )
    elif at_bound:
        record.reason = (
            f"the fit ran to its bound (T = {fitted:.3g}): the validation split is too small or perfectly "
            "separated to calibrate on; T = 1 kept"
        )
    elif not record.val_nll_after < record.val_nll_before - 1e-6:
        record.reason = "T did not lower the validation NLL; T = 1 kept"
    else:
        record.kept = True
        record.reason = "lowered the validation NLL"
    return (fitted if record.kept else 1.0), record


def describe(record: Calibration | None, temperature: float) -> str:
    """One line for the terminal: what was fitted and whether it was kept."""
    if record is None:
        return f"calibration: not run (T = {temperature:.3g})"
    if record.fitted_temperature is None:
        return f"calibration: {record.reason}"
    verdict = "kept" if record.kept else "not kept"
    return (
        f"calibration: T = {record.fitted_temperature:.3g} {verdict} ({record.reason}); validation "
        f"NLL {record.val_nll_before:.3f} -> {record.val_nll_after:.3f}, "
        f"ECE {record.val_ece_before:.3f} -> {record.val_ece_after:.3f} on {record.n_val} images; "
        f"bundle T = {temperature:.3g}"
    )


def _store(run: RunDir, temperature: float, record: Calibration) -> BundleInfo:
    """Rewrite the bundle with `temperature` and the record; log what was decided."""
    info = retemper_bundle(run.bundle, temperature, record)
    log.info("%s", describe(info.calibration, info.temperature))
    return info
