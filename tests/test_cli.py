"""The command line as a user meets it: one-line errors (exit 2), Ctrl-C, predict's failures, 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import yaml
from PIL import Image

from covid_cxr import cli
from covid_cxr.bundle import load_bundle
from covid_cxr.data.synthetic import synthesize
from covid_cxr.training import train as train_module
from covid_cxr.training.lr_find import steepest_descent
from covid_cxr.training.presets import list_presets
from tests.test_bundle import image_files, tiny_model, write_tiny

TINY = {
    "name": "tiny",
    "preprocess": {"size": 32, "channels": 1},
    "model": {"arch": "convnet", "head": {"pooling": "gap", "hidden": [8]}},
    "train": {"epochs": 30, "batch_size": 16, "accelerator": "cpu", "seed": 1},
}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point in-process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2, `error: ...` naming the problem, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("error: ") == 1, err
    message = " ".join(err[err.index("error: ") :].split())  # after any log lines of the work done
    for needle in needles:
        assert needle in message, (needle, err)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    synthesize(root, 30, size=32, seed=3)
    return root


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("run") / "bundle", tiny_model(seed=5))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COVID_CXR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.epochs=0", ["train.epochs", "greater than or equal to 1", "got 0"]),
        ("train.batch_size=0", ["train.batch_size", "greater than or equal to 1"]),
        ("optim.lr=-1", ["optim.lr", "greater than 0", "got -1"]),
        (
            "model.arch=resnet999",
            ["model.arch", "unknown architecture 'resnet999'", "did you mean 'resnet50'"],
        ),
        ("train.epochs=many", ["train.epochs", "valid integer"]),
    ],
)
def test_bad_values_are_refused_before_any_work(
    override: str, needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["train", "-d", tmp_path / "no-data", "--out", tmp_path / "run", "-p", "demo", "-s", override], capsys
    )
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_broken_yaml_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: 3\n   batch_size: [1\n")
    code, _, err = run_cli(["train", "-d", tmp_path, "--out", tmp_path / "run", "-c", broken], capsys)
    assert_one_line_error(code, err, f"{broken}: invalid YAML at line 3")
    assert "<unicode string>" not in err


def _blocked(tmp_path: Path) -> Path:
    """A folder path that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out"


def test_unwritable_out_is_refused_before_reading_data(
    tmp_path: Path, phantoms: Path, tiny_yaml: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _blocked(tmp_path)
    image = image_files(tmp_path / "images", count=1)[0]
    for args in (
        ["train", "-d", phantoms, "--out", out, "-c", tiny_yaml],
        ["lr-find", "-d", phantoms, "--out", out, "-c", tiny_yaml],
        ["data", "inspect", tmp_path / "not-read", "--out", out],
        ["explain", bundle, image, "--out", out],
    ):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, f"--out {out}: cannot write there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(["data", "inspect", tmp_path, "--out", locked / "figures"], capsys)
    assert_one_line_error(code, err, "cannot write there", "Permission denied")


def test_unwritable_cache_is_refused(
    tmp_path: Path, phantoms: Path, tiny_yaml: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("COVID_CXR_CACHE", str(_blocked(tmp_path)))
    code, _, err = run_cli(["train", "-d", phantoms, "--out", tmp_path / "run", "-c", tiny_yaml], capsys)
    assert_one_line_error(code, err, "cache folder", "COVID_CXR_CACHE", "cannot write there")


def test_an_os_error_on_a_user_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "synth", _blocked(tmp_path), "--n", "3", "--size", "32"], capsys)
    assert_one_line_error(code, err, str(_blocked(tmp_path)))


class _CtrlCAt(L.Callback):
    """Raise KeyboardInterrupt at the end of epoch `epoch` (1-based), as Ctrl-C there would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_writes_the_bundle_and_says_how_to_resume(
    tmp_path: Path,
    phantoms: Path,
    tiny_yaml: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = train_module.run_callbacks
    monkeypatch.setattr(train_module, "run_callbacks", lambda *a: [_CtrlCAt(4), *real(*a)])
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "-d", phantoms, "--out", run, "-c", tiny_yaml], capsys)
    assert code == 130 and "Traceback" not in err
    text = " ".join(err.split())
    assert "interrupted at epoch 4/30; continue with: covid-cxr train -d" in text
    assert text.count("--resume") == 1 and "attempting graceful shutdown" not in text
    info = json.loads((run / "bundle" / "bundle.json").read_text())
    assert info["metrics"]["status"] == "interrupted" and info["metrics"]["interrupted_at_epoch"] == 4
    assert 1 <= info["metrics"]["best_epoch"] <= 3  # epoch 4's checkpoint was never written
    assert load_bundle(run / "bundle").predict_proba([str(next(phantoms.rglob("*.png")))]).shape == (1, 3)


def test_predict_reports_every_failure_and_predicts_the_rest(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = image_files(tmp_path / "images", count=3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    missing = tmp_path / "nonexistent.png"
    code, out, err = run_cli(["predict", bundle, good[0], broken, missing, *good[1:]], capsys)
    assert code == 1 and "Traceback" not in err
    for path in good:
        assert path.name in out
    assert f"file not found: {missing}" in " ".join(err.split())
    assert f"not an image (unknown format): {broken}" in " ".join(err.split())
    assert "2 of 5 images failed" in err
    code, out, _ = run_cli(["predict", bundle, good[0], missing, "--json"], capsys)
    rows = json.loads(out)
    assert (
        code == 1
        and rows[0]["path"] == str(good[0])
        and rows[1]
        == {
            "path": str(missing),
            "error": "file not found",
        }
    )


def test_predict_of_a_missing_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["predict", tmp_path / "nope", tmp_path / "x.png"], capsys)
    assert_one_line_error(code, err, f"run not found: {tmp_path / 'nope'}")


def _at_80_columns(*args: str) -> str:
    """Run the installed command as a user would, in an 80-column terminal's environment."""
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "covid_cxr.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    return done.stdout


def test_presets_show_every_name_whole_at_80_columns() -> None:
    lines = _at_80_columns("presets").splitlines()
    for info in list_presets():
        assert any(f"│ {info.name} " in line for line in lines), info.name


@pytest.mark.shared_data
def test_data_check_shows_every_class_whole_at_80_columns(shared_data: Path) -> None:
    lines = _at_80_columns("data", "check", str(shared_data / "radiography-224")).splitlines()
    for name in ("COVID", "Normal", "Viral Pneumonia"):
        assert any(f"│ {name} " in line for line in lines), name
    assert not any("…" in line for line in lines)


def test_demo_without_training_writes_checks_and_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["demo", "--no-train", "--n", "12", "--out", tmp_path / "demo"], capsys)
    assert code == 0, err
    checks = json.loads((tmp_path / "demo" / "checks.json").read_text())
    assert checks["n_images"] == 12
    assert len(list((tmp_path / "demo" / "figures").glob("*.png"))) >= 3
    assert "1. synthetic chest phantoms" in out and "3. figures" in out


def test_version_and_help_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from covid_cxr import __version__

    assert run_cli(["--version"], capsys)[1].strip() == f"covid-cxr {__version__}"
    for command in ("train", "predict", "explain", "lr-find", "presets"):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and "Example" in out and "<" not in out.replace("<=", ""), command


def test_explain_writes_titled_capped_panels_inside_the_run(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big chest.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1500), dtype=np.uint8)).save(big)
    code, out, err = run_cli(["explain", bundle.parent, big], capsys)
    assert code == 0, err
    panel = bundle.parent / "explanations" / "big chest_panel.png"
    with Image.open(panel) as png:
        assert max(png.size) <= 1024 and png.size[0] > png.size[1]
    with Image.open(panel.with_name("big chest_overlay.png")) as png:
        assert max(png.size) == 1024
    text = " ".join(out.split())
    assert "big chest.png" in text and "probability" in text
    assert any(f"│ {c} " in out for c in ("normal", "covid", "viral"))
    code, _, err = run_cli(["explain", bundle, big, "--out", tmp_path / "full", "--full-resolution"], capsys)
    with Image.open(tmp_path / "full" / "big chest_panel.png") as png:
        assert code == 0 and png.size[0] >= 3 * 1500


def test_steepest_descent_before_the_minimum() -> None:
    lrs = np.logspace(-7, 0, 100)
    x = np.log10(lrs)
    loss = 1.5 - 0.5 * np.tanh(x + 3) + np.where(x > -1, 40 * (x + 1) ** 2, 0)  # falls fastest at 1e-3
    loss[:5] += np.array([0.0, -0.6, 0.4, -0.3, 0.2])  # noisy first steps: steep but meaningless
    suggested = steepest_descent(list(lrs), list(loss))
    assert suggested is not None and 5e-4 < suggested < 2e-3
    assert steepest_descent(list(lrs), list(np.linspace(1, 2, 100))) is None  # the loss never falls


def test_epoch_lines_fit_80_columns_and_early_stopping_is_explained(
    tmp_path: Path, phantoms: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from covid_cxr.config import RunConfig
    from covid_cxr.training.progress import EpochSummary
    from covid_cxr.training.train import train_run

    full = {"train_loss": 0.1234, "train_accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.85}
    assert len(EpochSummary.line(100, 100, full, True)) <= 71  # + "INFO     " = 80
    cfg = RunConfig.model_validate(
        {**TINY, "train": {**TINY["train"], "epochs": 50, "early_stopping": {"patience": 1, "min_delta": 10}}}
    )
    with caplog.at_level("INFO", logger="covid_cxr"):
        train_run(cfg, phantoms, tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    lines = [r.getMessage() for r in caplog.records if r.name == "covid_cxr.training.progress"]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert epochs[0].startswith("epoch  1/50  loss ") and len(epochs) == 2
    assert lines[-1] == "stopped early at epoch 2: val_loss has not improved since epoch 1 (best)"


def test_data_check_of_unusable_data_is_one_error_line(tmp_path: Path, capsys) -> None:
    synthesize(tmp_path / "one", 4, classes=["normal"], size=32, seed=1)
    code, out, err = run_cli(["data", "check", tmp_path / "one"], capsys)
    assert "Data checks" in out  # the report is printed first
    assert_one_line_error(code, err, f"{tmp_path / 'one'}: not usable for training")
