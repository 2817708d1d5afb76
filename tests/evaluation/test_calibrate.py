"""The calibration step: T fitted on the validation split, kept only when it lowers the NLL, reversible."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from covid_cxr.bundle import load_bundle
from covid_cxr.cli import app
from covid_cxr.evaluation.calibrate import calibrate_run, decide
from covid_cxr.evaluation.calibration import apply_temperature, negative_log_likelihood


def _overconfident(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 3-class model that is right 80 % of the time but says so with ~100 % confidence."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    guess = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), guess] += 12.0
    return logits, y


def test_a_temperature_that_lowers_the_nll_is_kept() -> None:
    logits, y = _overconfident()
    temperature, record = decide(logits, y, "softmax")
    assert record.kept and temperature == record.fitted_temperature > 2
    assert record.val_nll_after < record.val_nll_before
    assert record.val_nll_after == pytest.approx(
        negative_log_likelihood(y, apply_temperature(logits, temperature))
    )
    assert record.val_ece_after < record.val_ece_before


def test_a_perfectly_separated_validation_split_keeps_t_1() -> None:
    y = np.arange(60) % 3
    logits = np.eye(3)[y] * 8.0
    temperature, record = decide(logits, y, "softmax")
    assert temperature == 1.0 and not record.kept
    assert "every validation image is classified correctly" in record.reason


def test_training_calibrates_and_calibrate_can_reset(tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    trained = load_bundle(run / "bundle").bundle_info
    assert trained.calibration is not None and trained.calibration.n_val > 0
    assert trained.temperature == (
        trained.calibration.fitted_temperature if trained.calibration.kept else 1.0
    )
    reset = calibrate_run(run, reset=True)
    assert reset.temperature == 1.0 and not reset.calibration.kept
    result = CliRunner().invoke(app, ["calibrate", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "calibration: T = " in result.output and "validation NLL" in result.output
    again = load_bundle(run / "bundle").bundle_info
    assert again.temperature == pytest.approx(trained.temperature)
    assert again.calibration.kept == trained.calibration.kept
