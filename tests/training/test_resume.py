"""Resume: a training process killed with SIGKILL mid-run continues from last.ckpt, each epoch logged once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from covid_cxr.config import RunConfig
from covid_cxr.data.synthetic import synthesize
from covid_cxr.training.train import train_run

pytestmark = pytest.mark.slow

EPOCHS = 5

# Trains like `covid-cxr train`, with a per-batch sleep so the test can kill it mid-epoch.
SCRIPT = """
import sys, time
import lightning as L
from covid_cxr.config import RunConfig
from covid_cxr.training.train import train_run

class Slow(L.Callback):
    def on_train_batch_end(self, *args):
        time.sleep(float(sys.argv[4]))

cfg = RunConfig.model_validate_json(open(sys.argv[1]).read())
train_run(cfg, sys.argv[2], sys.argv[3], progress=False, cache_dir=sys.argv[5], callbacks=[Slow()])
"""


def _config() -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "resume",
            "preprocess": {"size": 32, "channels": 1, "normalize": "unit"},
            "model": {"arch": "convnet", "head": {"pooling": "flatten", "hidden": [16]}},
            "train": {"epochs": EPOCHS, "batch_size": 8, "accelerator": "cpu", "seed": 3},
        }
    )


class EpochRecorder(L.Callback):
    """Records which (0-based) epochs a fit actually trains."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


def _checkpointed_epochs(last: Path) -> int:
    """Epochs finished in checkpoints/last.ckpt (0 before the first one); the file is replaced atomically."""
    return torch.load(last, weights_only=False)["epoch"] + 1 if last.is_file() else 0


def _wait_for_checkpoint(
    proc: subprocess.Popen, last: Path, epochs: int, log: Path, timeout: float = 90
) -> None:
    """Poll last.ckpt until it holds `epochs` finished epochs; fail if the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while _checkpointed_epochs(last) < epochs:
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no checkpoint of epoch {epochs} within {timeout} s")
        time.sleep(0.05)


def test_killed_run_resumes_with_each_epoch_once(tmp_path: Path) -> None:
    data, out, cache = tmp_path / "data", tmp_path / "run", tmp_path / "cache"
    synthesize(data, n=36, size=32, seed=1)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(_config().model_dump_json())
    script = tmp_path / "train_slow.py"
    script.write_text(SCRIPT)
    log = tmp_path / "train.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(cfg_file), str(data), str(out), "0.25", str(cache)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_checkpoint(proc, out / "checkpoints" / "last.ckpt", 2, log)  # epoch 3 now runs
        finally:
            proc.kill()  # SIGKILL: no cleanup runs
            proc.wait()
    before = pd.read_csv(out / "metrics.csv")
    done = _checkpointed_epochs(out / "checkpoints" / "last.ckpt")
    assert 2 <= done <= len(before) < EPOCHS

    recorder = EpochRecorder()
    result = train_run(
        _config(), data, out, resume=True, progress=False, cache_dir=cache, callbacks=[recorder]
    )

    assert recorder.epochs == list(range(done, EPOCHS))  # resumed after the checkpoint, not restarted
    after = pd.read_csv(out / "metrics.csv")
    assert after["epoch"].tolist() == list(range(1, EPOCHS + 1))
    pd.testing.assert_frame_equal(after.iloc[:done], before.iloc[:done])
    assert result.metrics["epochs"] == EPOCHS
    assert (out / "bundle" / "bundle.json").is_file()
