"""The `covid-cxr` command line: thin wrappers that print; the work lives in the library."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
import typer.core
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from covid_cxr.errors import CxrError

app = typer.Typer(
    help="Train, evaluate, explain and serve chest X-ray classifiers. Research use only, not for diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, check, inspect and synthesise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)
_INVOCATION: list[str] = []  # the arguments main() was given, to print the command that resumes a run

ReaderOpt = Annotated[str, typer.Option("--reader", "-r", help="reader name, or 'auto' to detect the layout")]
OptionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="reader option, e.g. -o pneumonia_types=true -o views=[PA,AP] (repeatable)",
    ),
]


def _show_version(value: bool) -> None:
    """--version: print the package version and exit."""
    if value:
        from covid_cxr import __version__

        console.print(f"covid-cxr {__version__}")
        raise typer.Exit()


class _OursOrWarnings(logging.Filter):
    """Without -v: covid-cxr's own INFO lines, and only warnings and errors from libraries."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] == "covid_cxr"


_TRAINING_COMMANDS = ("train", "lr-find", "demo")


MapOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--map", help="class mapping LABEL=CLASS, e.g. --map No_findings=Normal; LABEL=- drops the label"
    ),
]
ReadersOpt = Annotated[
    Optional[list[str]],
    typer.Option("--reader", "-r", help="reader name, or 'auto' to detect the layout (per --data)"),
]
PER_SOURCE = ("reader", "option", "class_map")  # options that apply to the --data they follow
_ORDER: ContextVar[list[str] | None] = ContextVar("option_order", default=None)


class InOrder(typer.core.TyperCommand):
    """A command that remembers the order of its options, so that -o/--map/--reader follow their --data."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        _, _, order = self.make_parser(ctx).parse_args(args=list(args))
        ctx.meta["option_order"] = [param.name for param in order]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> object:
        token = _ORDER.set(ctx.meta.get("option_order"))
        try:
            return super().invoke(ctx)
        finally:
            _ORDER.reset(token)


def per_source(
    data: list[Path], reader: list[str] | str | None, option: list[str] | None, class_map: list[str] | None
) -> list[dict]:
    """Each --data with the --reader, -o and --map given after it (and before the next --data).

    Those given before the first --data apply to every source. Without a recorded order (a call
    from Python), all of them apply to every source.
    """
    from covid_cxr.data.sources import parse_class_map

    order = _ORDER.get()
    values = {"reader": [reader] if isinstance(reader, str) else list(reader or [])}
    values.update(option=list(option or []), class_map=list(class_map or []))
    if order is None or "data" not in order:
        order = [*(n for n in PER_SOURCE for _ in values[n]), *(["data"] * len(data))]
    pending = {n: iter(v) for n, v in values.items()}
    common: dict = {"reader": "auto", "option": [], "class_map": []}
    sources: list[dict] = []
    paths = iter(data)
    for name in order:
        if name == "data":
            sources.append({**common, "path": next(paths), "option": [], "class_map": []})
        elif name in PER_SOURCE:
            target = sources[-1] if sources else common
            value = next(pending[name])
            target[name] = value if name == "reader" else [*target[name], value]
    for source in sources:
        source["option"] = {**parse_options(common["option"]), **parse_options(source["option"])}
        source["class_map"] = {**parse_class_map(common["class_map"]), **parse_class_map(source["class_map"])}
    return sources


@app.callback()
def _setup(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="debug logging, library messages included")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Train, evaluate, explain and serve chest X-ray classifiers. Research use only, not for diagnosis."""
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    if not verbose:
        handler.addFilter(_OursOrWarnings())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True
    )
    logging.captureWarnings(True)  # warnings as one WARNING log line, not file:line source echoes
    if ctx.invoked_subcommand in _TRAINING_COMMANDS:
        _adopt_lightning_logging()
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's own pytree deprecation
    if not verbose:
        _quiet_library_warnings()
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _adopt_lightning_logging() -> None:
    """Lightning adds its own stream handlers on import: drop them, so its lines go through ours once."""
    if not err_console.is_terminal:
        os.environ.setdefault("TQDM_DISABLE", "1")  # the LR finder's tqdm bar: read when tqdm is imported
    import lightning  # noqa: F401 - its import adds the handlers

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _quiet_library_warnings() -> None:
    """Hide library warnings that say nothing to a user of the CLI (shown again with -v)."""
    for pattern in (
        r".*weights_only.*",
        r".*does not have many workers.*",  # Lightning: num_workers advice for in-memory arrays
        r".*litlogger.*",
        r".*The number of training batches.*log_every_n_steps.*",
        r".*module\(s\) in eval mode.*",  # a frozen backbone's BatchNorm layers, on purpose
        r".*Checkpoint directory .* exists and is not empty.*",  # --resume, on purpose
    ):
        warnings.filterwarnings("ignore", message=pattern)


def parse_options(options: list[str] | None) -> dict:
    """Turn KEY=VALUE strings into a dict, values parsed as YAML (true, 3, [a, b])."""
    parsed = {}
    for item in options or []:
        if "=" not in item:
            raise CxrError(f"option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def progress_bar(description: str) -> Progress:
    """A rich progress bar for long loops, on stderr."""
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def writable_dir(path: Path, what: str = "--out") -> Path:
    """Create `path` when needed and prove a file can be written there, before any work starts."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CxrError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def _writable_cache() -> Path:
    """The preprocessing cache folder, checked writable ($COVID_CXR_CACHE or ~/.cache/covid-cxr)."""
    from covid_cxr.data.cache import default_cache_root

    return writable_dir(default_cache_root(), "cache folder ($COVID_CXR_CACHE)")


def _read(source: Path, reader: str, options: list[str] | None):
    from covid_cxr.data.readers import read_source

    return read_source(source, reader=reader, **parse_options(options))


def _check(result):
    from covid_cxr.data.checks import run_checks

    with progress_bar("decoding") as bar:
        task = bar.add_task("decode", total=len(result.manifest))
        return run_checks(
            result.manifest, result.problems, progress=lambda done, total: bar.update(task, completed=done)
        )


@data_app.command("check")
def data_check(
    source: Annotated[Path, typer.Argument(help="dataset folder or CSV manifest")],
    reader: ReaderOpt = "auto",
    option: OptionOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    lungs: Annotated[
        bool,
        typer.Option("--lungs", help="also segment each image: lung area, components, implausible ones"),
    ] = False,
    class_map: MapOpt = None,
) -> None:
    """Decode every file and report unreadable files, duplicates, class balance, sizes and sources."""
    from dataclasses import replace

    from covid_cxr.data.checks import render_report
    from covid_cxr.data.sources import apply_class_map, parse_class_map

    result = _read(source, reader, option)
    if class_map:
        result = replace(
            result, manifest=apply_class_map(result.manifest, parse_class_map(class_map), str(source))
        )
    report = _check(result)
    audit = _lung_audit(result.manifest["path"].astype(str).tolist()) if lungs else None
    if as_json:
        payload = report.to_dict()
        payload["reader_counts"] = result.counts
        if audit is not None:
            payload["lungs"] = audit
        typer.echo(json.dumps(payload, indent=2))
    else:
        if result.counts:
            console.print("Reader: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))
        render_report(report, console)
        if audit is not None:
            _print_lung_audit(audit)
    if not report.usable:
        raise CxrError(f"{source}: not usable for training: {report.unusable_reason}")


def _lung_audit(paths: list[str]) -> list[dict]:
    """Lung area fraction, component count and quality of every image, with a progress bar."""
    from covid_cxr.lungs.predict import audit_files

    with progress_bar("segmenting lungs") as bar:
        task = bar.add_task("lungs", total=len(paths))
        rows = []
        for path in paths:
            rows += audit_files([path])
            bar.advance(task)
    return rows


def _print_lung_audit(rows: list[dict]) -> None:
    """How many images show two plausible lungs, and the others by name."""
    bad = [r for r in rows if r["quality"] != "ok"]
    console.print(f"lungs: {len(rows) - len(bad)} of {len(rows)} images show two plausible lungs")
    for item in bad:
        console.print(f"  {escape(item['path'])}: {escape(item['quality'])} (lungs {item['area_fraction']})")


@data_app.command("inspect")
def data_inspect(
    source: Annotated[Path, typer.Argument(help="dataset folder or CSV manifest")],
    out: Annotated[Path, typer.Option("--out", help="folder for the PNG figures")],
    reader: ReaderOpt = "auto",
    option: OptionOpt = None,
    per_class: Annotated[int, typer.Option(help="images per class in the sample grids")] = 6,
) -> None:
    """Write PNG figures: class counts, size and intensity histograms, a sample grid per class."""
    from covid_cxr.data.figures import inspect_figures

    writable_dir(out)
    result = _read(source, reader, option)
    for path in inspect_figures(result.manifest, out, per_class=per_class):
        console.print(f"wrote {path}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="output folder (folder per class + manifest.csv)")],
    n: Annotated[int, typer.Option("--n", help="number of images")] = 300,
    classes: Annotated[
        Optional[list[str]], typer.Option("--classes", help="normal, covid, viral, bacterial")
    ] = None,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    shortcut_marker: Annotated[bool, typer.Option(help="burn a corner marker into one class")] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Generate synthetic chest phantoms with lesion and lung masks."""
    from covid_cxr.data.synthetic import synthesize

    with progress_bar("rendering") as bar:
        task = bar.add_task("render", total=n)
        frame = synthesize(
            out,
            n,
            classes=classes,
            size=size,
            shortcut_marker=shortcut_marker,
            seed=seed,
            progress=lambda done: bar.update(task, completed=done),
        )
    counts = frame["label"].value_counts().to_dict()
    console.print(
        f"wrote {len(frame)} phantoms to {out} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
    )


@app.command("presets")
def presets() -> None:
    """List the presets: each reproduces one seed notebook's pipeline.

    The seeds are the notebooks this project reproduces: 000 Pinto, 001 Xu, 002 COVIDLite, 003 Li, 004 MachineCurve.
    """  # noqa: E501 - typer keeps a docstring's line breaks
    from rich.table import Table

    from covid_cxr.training.presets import list_presets

    table = Table(title="Presets (covid-cxr train --preset NAME)", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("what it trains, and the seed it reproduces", overflow="fold")
    for info in list_presets():
        table.add_row(escape(info.name), f"{escape(info.description)}\n[dim]seed {escape(info.seed_ref)}[/]")
    console.print(table)


def _config(preset: str | None, config: Path | None, overrides: list[str] | None):
    from covid_cxr.training.presets import load_config

    if not preset and not config:
        raise CxrError("give --preset NAME (see `covid-cxr presets`) or --config FILE")
    return load_config(preset, config, overrides or [])


DataOpt = Annotated[Path, typer.Option("--data", "-d", help="dataset folder or CSV manifest")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="preset name (covid-cxr presets)")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", "-s", metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3 (repeatable)"
    ),
]


@app.command("train", cls=InOrder)
def train(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data", "-d", help="dataset folder or CSV manifest; repeat it to train on several sources"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="run folder, e.g. runs/NAME (NAME is the run's name)")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    reader: ReadersOpt = None,
    option: OptionOpt = None,
    class_map: MapOpt = None,
    holdout_source: Annotated[
        Optional[str], typer.Option(help="make this whole source (its folder name) the test split")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue the run in --out from checkpoints/last.ckpt")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="replace the run already in --out (its checkpoints, evaluations, bundle)")
    ] = False,
    folds: Annotated[Optional[int], typer.Option(help="k-fold cross-validation")] = None,
    devices: Annotated[Optional[str], typer.Option(help="Lightning devices, e.g. 1, 4 or auto")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="Lightning strategy, e.g. ddp")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Lightning precision, e.g. bf16-mixed")] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (faster GPU steps after ~1 min)")
    ] = False,
) -> None:
    """Train a model and write the run folder (config, manifest, checks, checkpoints, metrics, bundle).

    --reader, -o and --map apply to the --data they follow (before the first --data: to every one).
    """
    from covid_cxr.evaluation.calibrate import describe
    from covid_cxr.training.train import train_run

    extra = [
        f"train.{k}={v}"
        for k, v in (("devices", devices), ("strategy", strategy), ("precision", precision))
        if v
    ]
    if compile_model:
        extra.append("train.compile=true")
    named = [] if any(o.startswith("name=") for o in overrides or []) else [f"name={out.resolve().name}"]
    if holdout_source:
        extra.append(f"data.holdout_source={holdout_source}")
    cfg = _config(preset, config, [*named, *(overrides or []), *extra])
    cfg, single = _with_sources(cfg, per_source(data, reader, option, class_map))
    writable_dir(out), _writable_cache()
    with _on_interrupt(_resume_command()):
        result = train_run(cfg, single, out, resume=resume, folds=folds, overwrite=overwrite)
    console.print(f"run folder: {result.out}")
    if result.metrics:
        console.print(_metrics_line(result.metrics))
    if result.bundle:
        from covid_cxr.bundle_info import read_bundle_info

        info = read_bundle_info(result.bundle)
        console.print(describe(info.calibration, info.temperature))
        console.print(f"bundle: {result.bundle}")


def _with_sources(cfg, sources: list[dict]):
    """(config, data path): one source fills data.reader/reader_options/map; several fill data.sources."""
    from covid_cxr.config import SourceConfig

    data = cfg.data
    if len(sources) == 1:
        (source,) = sources
        update = {
            "reader": data.reader if source["reader"] == "auto" else source["reader"],
            "reader_options": {**data.reader_options, **source["option"]},
            "map": {**data.map, **source["class_map"]},
        }
        return cfg.model_copy(update={"data": data.model_copy(update=update)}), source["path"]
    specs = [
        SourceConfig(path=str(s["path"]), reader=s["reader"], options=s["option"], map=s["class_map"])
        for s in sources
    ]
    return cfg.model_copy(update={"data": data.model_copy(update={"sources": specs, "source": None})}), None


@app.command("calibrate")
def calibrate(
    run: Annotated[Path, typer.Argument(help="run folder (runs/NAME)")],
    reset: Annotated[bool, typer.Option(help="put the temperature back to 1 (undo the calibration)")] = False,
) -> None:
    """Fit the bundle's temperature on the validation split; kept only if it lowers the validation NLL."""
    from covid_cxr.evaluation.calibrate import calibrate_run, describe

    info = calibrate_run(run, reset=reset)
    console.print(describe(info.calibration, info.temperature))


def _metrics_line(metrics: dict) -> str:
    """'test accuracy 0.967, loss 0.112 (n 60); validation accuracy 0.983 (n 60); 10 epochs', rounded."""
    parts = []
    for split, name in (("test", "test"), ("val", "validation")):
        if f"{split}_accuracy" in metrics:
            parts.append(
                f"{name} accuracy {metrics[f'{split}_accuracy']:.3f}, loss {metrics[f'{split}_loss']:.3f}"
                f" (n {metrics.get(f'n_{split}', '?')})"
            )
    if "epochs" in metrics:
        parts.append(f"{metrics['epochs']} epochs")
    return "; ".join(parts) if parts else json.dumps(metrics, default=str)


@contextmanager
def _on_interrupt(resume_command: str) -> Iterator[None]:
    """Ctrl-C during training: say where it stopped, where the bundle is and how to go on; exit 130."""
    from covid_cxr.errors import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as stop:
        err_console.print(f"{stop}; continue with: {escape(resume_command)}", soft_wrap=True)
        if stop.bundle is not None:
            err_console.print(f"bundle of the best epoch so far (marked interrupted): {stop.bundle}")
        raise typer.Exit(130) from None


def _resume_command() -> str:
    """The command line being run, with --resume added."""
    words = _INVOCATION or ["train", "..."]
    return shlex.join(["covid-cxr", *words, *([] if "--resume" in words else ["--resume"])])


@app.command("reliability")
def reliability(
    run: Annotated[Path, typer.Argument(help="run folder (runs/NAME)")],
    overrides: SetOpt = None,
) -> None:
    """Fit the OOD detector (train split, threshold on val) and the conformal sets (val) into the bundle.

    Settings come from the run's config.yaml (section reliability), changed with e.g.
    --set reliability.coverage=0.95."""
    from covid_cxr.reliability.fit import describe, fit_reliability
    from covid_cxr.run_dir import RunDir
    from covid_cxr.training.presets import load_config

    config = RunDir(run).config
    cfg = load_config(None, config if config.is_file() else None, overrides or []).reliability
    console.print(describe(fit_reliability(run, cfg)))


@app.command("lr-find")
def lr_find(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="folder for lr_find.png")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Learning-rate range test: a short run with a rising learning rate; suggests one and plots the loss.

    As in the Pinto 2021 notebook (seed 000, which `covid-cxr presets` lists): the suggestion is where the smoothed loss falls fastest, before its minimum.
    """  # noqa: E501 - typer keeps a docstring's line breaks
    from covid_cxr.training.lr_find import lr_find as run_lr_find

    cfg = _config(preset, config, overrides)
    writable_dir(out), _writable_cache()
    suggested, plot = run_lr_find(cfg, data, out)
    console.print(f"suggested learning rate: {suggested:.3g}\nplot: {plot}")


@app.command("predict")
def predict(
    bundle: Annotated[Path, typer.Argument(help="run folder or bundle folder (runs/NAME/bundle)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders (PNG, JPEG, DICOM)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    frontal_check: Annotated[
        bool, typer.Option(help="run the lung segmenter to check each image is a frontal chest film")
    ] = True,
) -> None:
    """Class probabilities per image, with the bundle's own preprocessing, and whether to trust them.

    Each image also gets the input gate's reason codes (not_greyscale, too_small, likely_inverted, not_frontal_chest), the out-of-distribution flag and the conformal prediction set; "abstain" means: outside what this model was trained on, do not interpret. Every readable image is predicted; unreadable or missing ones are listed with the reason at the end, and the exit code is then 1.
    """  # noqa: E501 - typer keeps a docstring's line breaks
    from rich.table import Table

    from covid_cxr.bundle import load_bundle

    files, failures = _image_files(images)
    predictor = load_bundle(_bundle_dir(bundle))
    predictor.frontal_check = frontal_check
    results, unreadable = predictor.predict_files(files) if files else ([], {})
    failures.update(unreadable)
    if as_json:
        payload = [r.to_dict() for r in results]
        failed = [{"path": path, "error": reason} for path, reason in failures.items()]
        typer.echo(json.dumps(payload + failed, indent=2))
    elif results:
        table = Table(title="Predictions (research use only, not for diagnosis)")
        table.add_column("image", overflow="fold")
        for name in predictor.classes:
            table.add_column(name, justify="right")
        table.add_column("predicted", overflow="fold")
        table.add_column("prediction set", overflow="fold")
        table.add_column("verdict", overflow="fold")
        for item in results:
            table.add_row(
                escape(Path(item.path).name),
                *(f"{item.probabilities[c]:.3f}" for c in predictor.classes),
                item.label,
                "-" if item.prediction_set is None else "{" + ", ".join(item.prediction_set) + "}",
                _verdict(item.abstain_reasons),
            )
        console.print(table)
        if predictor.reliability.detector is None:
            console.print(
                "this bundle has no out-of-distribution detector: unfamiliar images are not flagged "
                "(fit one with: covid-cxr reliability RUN)"
            )
    _report_failures(failures, len(results))


def _verdict(reasons: list[str]) -> str:
    """'ok', or 'abstain: <reasons>' in red: outside what the model was trained on."""
    return "ok" if not reasons else f"[bold red]abstain[/]: {escape(', '.join(reasons))}"


def _report_failures(failures: dict[str, str], done: int) -> None:
    """List every file that could not be used, then exit 1; nothing when all went well."""
    if not failures:
        return
    for path, reason in failures.items():
        err_console.print(f"[bold red]error:[/] {escape(reason)}: {escape(path)}", soft_wrap=True)
    err_console.print(f"{len(failures)} of {len(failures) + done} images failed")
    raise typer.Exit(1)


def _bundle_dir(path: Path) -> Path:
    """Accept a run folder (runs/NAME) or its bundle folder; CxrError when neither exists."""
    if not path.exists():
        raise CxrError(f"run not found: {path}")
    from covid_cxr.bundle_info import BUNDLE_JSON
    from covid_cxr.run_dir import RunDir

    run = RunDir(path)
    if (run.bundle / BUNDLE_JSON).is_file():
        return run.bundle
    if path.is_dir() and not (path / BUNDLE_JSON).is_file() and run.config.is_file():
        raise CxrError(
            f"{path}: the run has no bundle yet (it did not finish); "
            f"continue it with: covid-cxr train --out {path} -d DATA -p PRESET --resume"
        )
    return path


def _image_files(paths: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """Files as given, folders expanded to the images inside them; missing paths with their reason."""
    from covid_cxr.data.manifest import is_image_file

    files: list[Path] = []
    missing: dict[str, str] = {}
    for p in paths:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(x for x in p.rglob("*") if is_image_file(x))
            files += found
            if not found:
                missing[str(p)] = "folder holds no image files"
        else:
            missing[str(p)] = "file not found"
    return files, missing


def _test_split_images(run: Path) -> list[Path]:
    """The test-split images of a run folder (its manifest.csv)."""
    from covid_cxr.data.manifest import load_manifest
    from covid_cxr.run_dir import RunDir

    manifest_csv = RunDir(run).manifest
    if not manifest_csv.is_file():
        raise CxrError(f"{run}: no images given and no {manifest_csv.name} to take the test split from")
    frame = load_manifest(manifest_csv)
    return [Path(p) for p in frame.loc[frame["split"] == "test", "path"]]


@app.command("evaluate", cls=InOrder)
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder (runs/NAME)")],
    data: Annotated[
        Optional[list[Path]],
        typer.Option("--data", "-d", help="another dataset (repeatable; classes matched by name)"),
    ] = None,
    reader: ReadersOpt = None,
    option: OptionOpt = None,
    shortcut_checks: Annotated[
        bool,
        typer.Option(
            "--shortcut-checks/--no-shortcut-checks", help="lungs hidden, border crop, source confounding"
        ),
    ] = True,
    bootstrap: Annotated[
        int, typer.Option(help="bootstrap resamples for the AUC and ECE intervals (0 = none)")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    report: Annotated[bool, typer.Option("--report/--no-report", help="write report.html afterwards")] = True,
    class_map: MapOpt = None,
    frontal_check: Annotated[
        bool, typer.Option(help="run the lung segmenter for the input gate's frontal-chest check")
    ] = True,
) -> None:
    """Metrics with 95 % CIs, curves, calibration and shortcut checks (test split or other datasets).

    --reader, -o and --map apply to the --data they follow (before the first --data: to every one).
    """
    from covid_cxr.evaluation.evaluate import evaluate_run

    sources = per_source(data, reader, option, class_map) if data else [None]
    for source in sources:
        name = "the test split" if source is None else Path(source["path"]).name
        with progress_bar(f"evaluating {name}") as bar:
            task = bar.add_task("evaluate", total=None)
            result = evaluate_run(
                run,
                None if source is None else source["path"],
                reader="auto" if source is None else source["reader"],
                reader_options=None if source is None else source["option"],
                shortcut_checks=shortcut_checks,
                bootstrap=bootstrap,
                seed=seed,
                class_map=None if source is None else source["class_map"],
                progress=lambda done, total, task=task: bar.update(task, completed=done, total=total),
                frontal_check=frontal_check,
            )
        _print_evaluation(result)
    if report:
        _write_report(run)


def _print_evaluation(result: dict) -> None:
    """Classification report, headline intervals, calibration, shortcut verdicts and reliability."""
    from rich.table import Table

    from covid_cxr.report.reliability import reliability_line
    from covid_cxr.report.run_files import Evaluation

    console.print(result["metrics"]["report_text"])
    intervals = result.get("intervals") or {}
    level = f"{100 * intervals.get('level', 0.95):g} %"
    table = Table(title=f"Headline figures ({level} intervals)")
    for column in ("metric", "value", f"{level} CI", "method"):
        table.add_column(column)
    for name, v in intervals.get("values", {}).items():
        ci = f"{_num(v['lower'])} - {_num(v['upper'])}"
        table.add_row(escape(name), _num(v["point"]), ci, v.get("method", "percentile bootstrap"))
    console.print(table)
    cal = result["calibration"]
    console.print(
        f"calibration: temperature {cal['temperature']:.3g}, "
        f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
    )
    shortcuts = result.get("shortcuts") or {}
    for key in ("confounding", "confounding_evaluated", "lungs_hidden", "border_crop"):
        if key in shortcuts:
            console.print(f"[bold]{key}[/]: {escape(shortcuts[key]['verdict'])}")
    for label, action in (result["dataset"].get("class_handling") or {}).items():
        console.print(f"class {escape(label)}: {escape(action)}")
    if fc := result.get("false_covid"):
        console.print(
            f"[bold]non-COVID called COVID[/]: {fc['called_covid']} of {fc['n_non_covid']} "
            f"({_num(fc['share'])}), {fc['n_outside_model_classes']} of them of classes the model lacks"
        )
    if sp := result.get("source_predictability"):
        console.print(f"[bold]source predictability[/]: {escape(sp['verdict'])}")
    console.print(escape(reliability_line(Evaluation(Path(result["output_dir"]), result), "reliability")))
    console.print(f"evaluation folder: {result['output_dir']}")


def _num(value: float | None) -> str:
    """A metric for display; '-' when undefined."""
    return "-" if value is None else f"{value:.3f}"


def _write_report(run: Path, out: Path | None = None) -> None:
    """Build report.html for a run and print its path."""
    from covid_cxr.report import build_report

    console.print(f"report: {build_report(run, out)}")


@app.command("report")
def report(
    run: Annotated[Path, typer.Argument(help="run folder (runs/NAME)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file (default RUN/report.html)")] = None,
) -> None:
    """Write the run's one self-contained report.html, with every evaluation the run folder holds."""
    _write_report(run, out)


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="evaluated run folders")],
    dataset: Annotated[
        str, typer.Option(help="compare the evaluations on this dataset ('test' = each run's test split)")
    ] = "test",
    strict: Annotated[bool, typer.Option(help="refuse runs tested on different images")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="also write the table as CSV")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="print seed 000's Markdown table")] = False,
) -> None:
    """Seed 000's comparison table across runs, with test set, n and intervals; flags different test sets."""
    from rich.table import Table

    from covid_cxr.evaluation.compare import compare_runs, describe_test_sets, to_csv, to_markdown

    comparison = compare_runs(runs, dataset=dataset, strict=strict)
    frame = comparison.table
    if markdown:
        typer.echo(to_markdown(frame))
    else:
        table = Table(title=f"Runs compared on '{dataset}'")
        for column in frame.columns:
            table.add_column(column, justify="right" if frame[column].dtype.kind in "fi" else "left")
        for row in frame.itertuples(index=False):
            table.add_row(*(f"{v:.2f}" if isinstance(v, float) else escape(str(v)) for v in row))
        console.print(table)
    style = "green" if comparison.same_test_set else "bold red"
    console.print(f"[{style}]{escape(describe_test_sets(comparison))}[/]")
    if csv:
        console.print(f"wrote {to_csv(frame, csv)}")


@app.command("explain")
def explain(
    bundle: Annotated[Path, typer.Argument(help="run folder or bundle folder")],
    images: Annotated[
        Optional[list[Path]], typer.Argument(help="images or folders; none = the run's test split")
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="folder for the panels and overlays [default: RUN/explanations]"),
    ] = None,
    method: Annotated[
        str, typer.Option(help="gradcam, gradcam++, guided, hirescam, xgradcam, layercam, eigencam, scorecam")
    ] = "gradcam",
    target: Annotated[
        str, typer.Option("--class", help="class name to explain, or 'predicted'")
    ] = "predicted",
    layer: Annotated[Optional[str], typer.Option(help="target layer name (default: the bundle's)")] = None,
    colormap: Annotated[str, typer.Option(help="jet or hot (also inferno, turbo, viridis)")] = "jet",
    alpha: Annotated[float, typer.Option(help="overlay opacity of the heatmap")] = 0.5,
    full_resolution: Annotated[
        bool, typer.Option("--full-resolution", help="panels at the image's own size, not capped at 1024 px")
    ] = False,
) -> None:
    """Grad-CAM panels (original | heatmap | overlay), titled with the file, the predicted class and its probability."""  # noqa: E501
    from rich.table import Table

    from covid_cxr.bundle import load_bundle
    from covid_cxr.explain.figure import MAX_SIDE, explain_files

    folder = _bundle_dir(bundle)
    files, failures = _image_files(images) if images else (_test_split_images(bundle), {})
    if not files:
        raise CxrError("no image files to explain" + "".join(f"; {r}: {p}" for p, r in failures.items()))
    out = writable_dir(out if out is not None else _run_folder(bundle) / "explanations")
    predictor = load_bundle(folder)
    with progress_bar("explaining") as bar:
        task = bar.add_task("explain", total=len(files))
        done, unreadable = explain_files(
            predictor,
            files,
            out,
            method=method,
            target=None if target == "predicted" else target,
            layer=layer,
            colormap=colormap,
            alpha=alpha,
            max_side=None if full_resolution else MAX_SIDE,
            progress=lambda i, total: bar.update(task, completed=i),
        )
    table = Table(title=f"{method} explanations (research use only, not for diagnosis)")
    for name in ("image", "predicted", "probability", "explained"):
        table.add_column(name, justify="right" if name == "probability" else "left", overflow="fold")
    for item in done[:_TABLE_ROWS]:
        table.add_row(escape(item.path.name), item.predicted, f"{item.probability:.3f}", item.target)
    console.print(table)
    if len(done) > _TABLE_ROWS:
        console.print(f"  ... and {len(done) - _TABLE_ROWS} more")
    console.print(f"panels and overlays of {len(done)} images in {out}")
    _report_failures({**failures, **unreadable}, len(done))


_TABLE_ROWS = 25  # explain's table; every panel is written either way


def _run_folder(path: Path) -> Path:
    """The run folder of a run or bundle path (a bundle's parent when given runs/NAME/bundle)."""
    return path if (path / "bundle").is_dir() or not (path / "bundle.json").is_file() else path.parent


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="run folder or bundle folder")],
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="make sure bundle/model.onnx exists and matches PyTorch")
    ] = True,
    triton: Annotated[
        Optional[Path], typer.Option("--triton", help="also write a Triton/KServe model repository here")
    ] = None,
) -> None:
    """ONNX export (dynamic batch, checked against PyTorch) and an optional Triton model repository."""
    from covid_cxr.export import export_run

    result = export_run(run, onnx=onnx, triton_dir=triton)
    console.print(json.dumps(result, indent=2, default=str))


@app.command("serve")
def serve(
    bundle: Annotated[Path, typer.Argument(help="run folder or bundle folder")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="COVID_CXR_API_KEY", help="require this key (X-API-Key or Bearer)")
    ] = None,
    model_name: Annotated[
        Optional[str], typer.Option(help="model name in the URLs (default: the run name)")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest accepted upload in MB")] = 50.0,
    allowed_hosts: Annotated[
        Optional[str],
        typer.Option(help="comma-separated Host names accepted (default: loopback names on a loopback host)"),
    ] = None,
    ssl_keyfile: Annotated[Optional[Path], typer.Option(help="TLS private key (PEM)")] = None,
    ssl_certfile: Annotated[Optional[Path], typer.Option(help="TLS certificate chain (PEM)")] = None,
    header_timeout: Annotated[float, typer.Option(help="seconds a client has to send its headers")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="seconds a client has to send its body")] = 30.0,
    frontal_check: Annotated[
        bool, typer.Option(help="run the lung segmenter in the input gate of /predict and /explain")
    ] = True,
) -> None:
    """REST server (TF-Serving, KServe v2, multipart) and the web page at /. Research use only.

    /predict, /explain and :explain answers carry prediction_set, ood, gate and abstain; TF-Serving :predict and KServe v2 answer probabilities as before.
    """  # noqa: E501 - typer keeps a docstring's line breaks
    import os

    from covid_cxr.serving import serve as run_server

    if api_key is None and "COVID_CXR_API_KEY" in os.environ:  # click reads an empty variable as unset
        api_key = os.environ["COVID_CXR_API_KEY"]
    extra = {} if allowed_hosts is None else {"allowed_hosts": allowed_hosts}
    scheme = "https" if ssl_certfile else "http"
    url = f"{scheme}://{host}:{port}"
    console.print(f"serving {bundle} on {url}/ (page), {url}/docs (API)")
    run_server(
        _bundle_dir(bundle),
        host=host,
        port=port,
        workers=workers,
        api_key=api_key,
        model_name=model_name,
        max_upload_bytes=int(max_upload_mb * 1_000_000),
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        ssl_keyfile=ssl_keyfile,
        ssl_certfile=ssl_certfile,
        frontal_check=frontal_check,
        **extra,
    )


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="folder for everything the demo writes")] = Path(
        "demo-output"
    ),
    n: Annotated[int, typer.Option("--n", help="number of phantoms")] = 300,
    train_model: Annotated[
        bool, typer.Option("--train/--no-train", help="train and predict after the data steps")
    ] = True,
) -> None:
    """Phantoms, checks, figures, train, predict, evaluate, explain, report; a rerun replaces it."""
    from covid_cxr.data.checks import save_report
    from covid_cxr.data.figures import inspect_figures

    phantoms = out / "phantoms"
    console.rule("1. synthetic chest phantoms")
    data_synth(phantoms, n=n, classes=None, size=128, shortcut_marker=False, seed=0)
    console.rule("2. data check")
    result = _read(phantoms, "auto", None)
    report = _check(result)
    from covid_cxr.data.checks import render_report

    render_report(report, console, limit=3)
    save_report(report, out / "checks.json")
    console.rule("3. figures")
    figures = inspect_figures(result.manifest, out / "figures", report=report)
    console.print(f"wrote {len(figures)} figures to {out / 'figures'}")
    if train_model:
        _demo_train(out, phantoms)
    console.rule("done")
    console.print(f"checks: {out / 'checks.json'}\nfigures: {out / 'figures'}")


def _demo_train(out: Path, phantoms: Path) -> None:
    """The demo's model half: train, predict, evaluate, explain, report, and how to serve it."""
    from covid_cxr.training.train import train_run

    console.rule("4. train (preset 'demo')")
    run = out / "runs" / "demo"
    resume = shlex.join(["covid-cxr", "train", "-d", str(phantoms), "--out", str(run), "-p", "demo"])
    with _on_interrupt(f"{resume} --resume"):
        result = train_run(_config("demo", None, ["name=demo"]), phantoms, run, overwrite=True)  # its own run
    console.print(_metrics_line(result.metrics))
    console.rule("5. predict with the bundle")
    samples = sorted(phantoms.glob("*/*.png"))[::60][:5]
    predict(result.bundle, samples, as_json=False)
    console.rule("6. evaluate (intervals, calibration, shortcut checks)")
    evaluate(
        run, data=None, reader="auto", option=None, shortcut_checks=True, bootstrap=1000, seed=0, report=False
    )
    console.rule("7. explain (Grad-CAM on the test split)")
    explain(
        run,
        images=None,
        out=run / "explanations",
        method="gradcam",
        target="predicted",
        layer=None,
        colormap="jet",
        alpha=0.5,
    )
    console.rule("8. report")
    _write_report(run)
    console.print(
        f"run folder: {run}\nbundle: {result.bundle}\n"
        f"serve it: .venv/bin/covid-cxr serve {run} --port 8000, then open http://127.0.0.1:8000/"
    )


lungs_app = typer.Typer(
    help="Lung-field segmentation: train the segmenter, predict masks.",
    no_args_is_help=True,
)
app.add_typer(lungs_app, name="lungs")


@lungs_app.command("train")
def lungs_train(
    data: Annotated[Path, typer.Option("--data", help="folder with images/ and masks/, or a path,mask CSV")],
    out: Annotated[Path, typer.Option("--out", help="output folder (checkpoints, metrics.csv, weights)")],
    epochs: Annotated[int, typer.Option(help="training epochs")] = 6,
    size: Annotated[int, typer.Option(help="input size in pixels")] = 192,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from out/checkpoints/last.ckpt")] = False,
) -> None:
    """Train the lung segmenter's decoder; prints Dice and IoU per source on the held-out test split."""
    from covid_cxr.lungs.train import LungTrainConfig, train_lungs

    figures = train_lungs(data, out, LungTrainConfig(size=size, epochs=epochs, seed=seed), resume=resume)
    for source, row in figures["per_source"].items():
        console.print(f"{source}: n={row['n']:.0f} Dice {row['dice']:.4f} IoU {row['iou']:.4f}")
    console.print(f"weights: {out / 'lungs-lite0.pt'} (SHA-256 {figures['weights_sha256']})")


@lungs_app.command("predict")
def lungs_predict(
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path, typer.Option("--out", help="folder for <stem>.png masks (0/255)")],
    overlay: Annotated[bool, typer.Option("--overlay", help="also write <stem>.overlay.png")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print per-image stats as JSON")] = False,
    weights: Annotated[Optional[Path], typer.Option(help="lungs train output (default: shipped)")] = None,
) -> None:
    """Lung masks at each image's own size, with lung area fraction, components and a quality flag."""
    from covid_cxr.lungs.predict import predict_files
    from covid_cxr.lungs.segmenter import load_segmenter

    files, missing = _image_files(images)
    for path, reason in missing.items():
        err_console.print(f"{escape(path)}: {reason}")
    if not files:
        raise CxrError("no image files to segment")
    results = predict_files(files, out, overlay, load_segmenter(str(weights) if weights else None))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    console.print(f"{len(results)} masks in {out}")
    _print_lung_audit(results)


@lungs_app.command("check")
def lungs_check(
    source: Annotated[Path, typer.Argument(help="dataset folder or CSV manifest")],
    reader: ReaderOpt = "auto",
    option: OptionOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print every image's figures as JSON")] = False,
) -> None:
    """Lung area fraction and components per image; lists images without two plausible lungs."""
    rows = _lung_audit(_read(source, reader, option).manifest["path"].astype(str).tolist())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_lung_audit(rows)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line `error: ...` and exit 2 for our errors and for OSErrors on user paths."""
    _INVOCATION[:] = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    _polish_help(command)
    try:
        command(argv, prog_name="covid-cxr")
    except CxrError as exc:
        _fail(str(exc))
    except OSError as exc:  # an unwritable folder, a full disk, a file that vanished
        _fail(_os_message(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


EXAMPLES = {
    "presets": "covid-cxr presets",
    "train": "covid-cxr train -d data/radiography -p pinto-vgg16 --out runs/vgg16 -s train.epochs=3",
    "lr-find": "covid-cxr lr-find -d data/radiography -p demo --out runs/lr",
    "predict": "covid-cxr predict runs/demo chest.png scans/ --json",
    "evaluate": "covid-cxr evaluate runs/demo --data other-hospital/ --bootstrap 1000",
    "report": "covid-cxr report runs/demo",
    "compare": "covid-cxr compare runs/vgg16 runs/resnet50 --csv table.csv",
    "calibrate": "covid-cxr calibrate runs/demo   (or --reset for T = 1)",
    "lungs train": "covid-cxr lungs train --data lungs-256/ --out runs/lungs",
    "lungs predict": "covid-cxr lungs predict scans/ --out masks/ --overlay",
    "lungs check": "covid-cxr lungs check data/radiography",
    "explain": "covid-cxr explain runs/demo chest.png --method gradcam++",
    "export": "covid-cxr export runs/demo --triton model-repo/",
    "serve": "covid-cxr serve runs/demo --port 8000",
    "demo": "covid-cxr demo --out demo-output",
    "data check": "covid-cxr data check data/radiography --json",
    "data inspect": "covid-cxr data inspect data/radiography --out figures/",
    "data synth": "covid-cxr data synth phantoms/ --n 300 --size 128",
}
_METAVARS = {"path": "PATH", "str": "TEXT", "int": "N", "float": "X"}


def _polish_help(command: Any, path: str = "") -> None:
    """Help a user reads: an example under every command, metavars PATH/TEXT/N, none on flags."""
    if path in EXAMPLES and not command.epilog:
        command.epilog = f"Example: {EXAMPLES[path]}"
    for param in command.params:
        if param.metavar is None:
            _set_metavar(param)
    command.get_help_option = _flag_without_type(command.get_help_option)
    for name, sub in getattr(command, "commands", {}).items():
        _polish_help(sub, f"{path} {name}".strip())


def _set_metavar(param: Any) -> None:
    """PATH, TEXT, N or X instead of typer's <path>, <list[str]>, <bool>; arguments by name, unbraced."""
    if getattr(param, "is_flag", False):
        param.metavar = ""
        return
    if param.param_type_name == "argument":
        name = param.name.upper()
        param.metavar = name + ("..." if param.nargs != 1 else "")
        shown = param.metavar if param.required else f"[{param.metavar}]"
        param.get_usage_pieces = lambda ctx: [shown]  # typer writes {name}
        param.display_type_rich = lambda ctx: None  # typer: <path>, <list[Path]>
        return
    kind = param.display_type(None).strip("<>").removeprefix("list[").removesuffix("]")
    param.metavar = _METAVARS.get(kind, kind.upper())


def _flag_without_type(get_help_option: Any) -> Any:
    """A command's get_help_option whose --help shows no <bool>."""

    def help_option(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return help_option


def _fail(message: str) -> NoReturn:
    """Print `error: message` on one line (no traceback) and exit 2."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(2)


def _os_message(exc: OSError) -> str:
    """'PATH: Permission denied' from an OSError, with the second path of a rename when there is one."""
    if exc.filename is None:
        return str(exc)
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {exc.strerror or exc}"


if __name__ == "__main__":
    main()
