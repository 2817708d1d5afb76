"""The `covid-cxr` command line: thin wrappers that print; the work lives in the library."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
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

ReaderOpt = Annotated[str, typer.Option("--reader", "-r", help="reader name, or 'auto' to detect the layout")]
OptionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--option", "-o", help="reader option KEY=VALUE, e.g. -o pneumonia_types=true -o views=[PA,AP]"
    ),
]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    """Configure logging for the whole command."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's own pytree deprecation
    for noisy in ("PIL", "matplotlib", "lightning.fabric", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
) -> None:
    """Decode every file and report unreadable files, duplicates, class balance, sizes and sources."""
    from covid_cxr.data.checks import render_report

    result = _read(source, reader, option)
    report = _check(result)
    if as_json:
        payload = report.to_dict()
        payload["reader_counts"] = result.counts
        typer.echo(json.dumps(payload, indent=2))
    else:
        if result.counts:
            console.print("Reader: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))
        render_report(report, console)
    if not report.usable:
        raise typer.Exit(1)


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
    """List the presets: each reproduces one seed notebook's pipeline."""
    from rich.table import Table

    from covid_cxr.training.presets import list_presets

    table = Table(title="Presets")
    for column in ("name", "description", "seed"):
        table.add_column(column)
    for info in list_presets():
        table.add_row(info.name, info.description, info.seed_ref)
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
    Optional[list[str]], typer.Option("--set", "-s", help="override KEY=VALUE, e.g. train.epochs=3")
]


@app.command("train")
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="run folder, e.g. runs/NAME (NAME is the run's name)")],
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    reader: ReaderOpt = "auto",
    option: OptionOpt = None,
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
    """Train a model and write the run folder (config, manifest, checks, checkpoints, metrics, bundle)."""
    from covid_cxr.evaluation.calibrate import describe
    from covid_cxr.training.train import train_run

    extra = [
        f"train.{k}={v}"
        for k, v in (("devices", devices), ("strategy", strategy), ("precision", precision))
        if v
    ]
    if compile_model:
        extra.append("train.compile=true")
    data_overrides = [f"data.reader={reader}"] if reader != "auto" else []
    data_overrides += [f"data.reader_options.{k}={json.dumps(v)}" for k, v in parse_options(option).items()]
    named = [] if any(o.startswith("name=") for o in overrides or []) else [f"name={out.resolve().name}"]
    cfg = _config(preset, config, [*named, *data_overrides, *(overrides or []), *extra])
    result = train_run(cfg, data, out, resume=resume, folds=folds, overwrite=overwrite)
    console.print(f"run folder: {result.out}")
    if result.metrics:
        console.print("test metrics: " + json.dumps(result.metrics, default=str))
    if result.bundle:
        from covid_cxr.bundle_info import read_bundle_info

        info = read_bundle_info(result.bundle)
        console.print(describe(info.calibration, info.temperature))
        console.print(f"bundle: {result.bundle}")


@app.command("calibrate")
def calibrate(
    run: Annotated[Path, typer.Argument(help="run folder (runs/NAME)")],
    reset: Annotated[bool, typer.Option(help="put the temperature back to 1 (undo the calibration)")] = False,
) -> None:
    """Fit the bundle's temperature on the validation split; kept only if it lowers the validation NLL."""
    from covid_cxr.evaluation.calibrate import calibrate_run, describe

    info = calibrate_run(run, reset=reset)
    console.print(describe(info.calibration, info.temperature))


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
    """Learning-rate range test (seed 000): suggests a learning rate and saves the plot."""
    from covid_cxr.training.lr_find import lr_find as run_lr_find

    suggested, plot = run_lr_find(_config(preset, config, overrides), data, out)
    console.print(f"suggested learning rate: {suggested:.3g}\nplot: {plot}")


@app.command("predict")
def predict(
    bundle: Annotated[Path, typer.Argument(help="run folder or bundle folder (runs/NAME/bundle)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders (PNG, JPEG, DICOM)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Class probabilities per image, with the bundle's own preprocessing."""
    from rich.table import Table

    from covid_cxr.bundle import load_bundle

    files = _image_files(images)
    if not files:
        raise CxrError("no image files given")
    predictor = load_bundle(_bundle_dir(bundle))
    results = predictor.predict_files(files)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table(title="Predictions (research use only, not for diagnosis)")
    table.add_column("image")
    for name in predictor.classes:
        table.add_column(name, justify="right")
    table.add_column("predicted")
    for item in results:
        table.add_row(
            Path(item["path"]).name,
            *(f"{item['probabilities'][c]:.3f}" for c in predictor.classes),
            item["predicted"],
        )
    console.print(table)


def _bundle_dir(path: Path) -> Path:
    """Accept a run folder (runs/NAME) or its bundle folder."""
    return path / "bundle" if (path / "bundle" / "bundle.json").is_file() else path


def _image_files(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to the images inside them."""
    from covid_cxr.data.manifest import is_image_file

    return [
        f
        for p in paths
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if is_image_file(x)))
    ]


def _test_split_images(run: Path) -> list[Path]:
    """The test-split images of a run folder (its manifest.csv)."""
    from covid_cxr.data.manifest import load_manifest

    manifest_csv = run / "manifest.csv"
    if not manifest_csv.is_file():
        raise CxrError(f"{run}: no images given and no manifest.csv to take the test split from")
    frame = load_manifest(manifest_csv)
    return [Path(p) for p in frame.loc[frame["split"] == "test", "path"]]


@app.command("evaluate")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder (runs/NAME)")],
    data: Annotated[
        Optional[list[Path]],
        typer.Option("--data", "-d", help="another dataset (repeatable; classes matched by name)"),
    ] = None,
    reader: ReaderOpt = "auto",
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
) -> None:
    """Metrics with 95 % CIs, curves, calibration and shortcut checks (test split or other datasets)."""
    from covid_cxr.evaluation.evaluate import evaluate_run

    for dataset in data or [None]:
        result = evaluate_run(
            run,
            dataset,
            reader=reader,
            reader_options=parse_options(option),
            shortcut_checks=shortcut_checks,
            bootstrap=bootstrap,
            seed=seed,
        )
        _print_evaluation(result)
    if report:
        _write_report(run)


def _print_evaluation(result: dict) -> None:
    """Classification report, headline intervals, calibration and shortcut verdicts."""
    from rich.table import Table

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
    out: Annotated[Path, typer.Option("--out", help="folder for the panels and overlays")] = Path(
        "explanations"
    ),
    method: Annotated[
        str, typer.Option(help="gradcam, gradcam++, guided, hirescam, xgradcam, layercam, eigencam, scorecam")
    ] = "gradcam",
    target: Annotated[
        str, typer.Option("--class", help="class name to explain, or 'predicted'")
    ] = "predicted",
    layer: Annotated[Optional[str], typer.Option(help="target layer name (default: the bundle's)")] = None,
    colormap: Annotated[str, typer.Option(help="jet or hot (also inferno, turbo, viridis)")] = "jet",
    alpha: Annotated[float, typer.Option(help="overlay opacity of the heatmap")] = 0.5,
) -> None:
    """Grad-CAM heatmaps at the original resolution: panel original | heatmap | overlay per image."""
    from covid_cxr.bundle import load_bundle
    from covid_cxr.explain.cam import explain_batch

    files = _image_files(images) if images else _test_split_images(bundle)
    if not files:
        raise CxrError("no image files to explain")
    predictor = load_bundle(_bundle_dir(bundle))
    written = explain_batch(
        predictor,
        files,
        out,
        method=method,
        target=None if target == "predicted" else target,
        layer=layer,
        colormap=colormap,
        alpha=alpha,
    )
    console.print(f"wrote {len(written)} files for {len(files)} images to {out}")


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
) -> None:
    """REST server (TF-Serving, KServe v2, multipart) and the web page at /. Research use only."""
    from covid_cxr.serving import serve as run_server

    console.print(f"serving {bundle} on http://{host}:{port}/ (page), http://{host}:{port}/docs (API)")
    run_server(
        _bundle_dir(bundle),
        host=host,
        port=port,
        workers=workers,
        api_key=api_key,
        model_name=model_name,
        max_upload_bytes=int(max_upload_mb * 1_000_000),
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
    """Synthetic phantoms -> checks -> figures -> train -> bundle -> predict, on 2 CPU cores."""
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
    result = train_run(_config("demo", None, []), phantoms, run)
    console.print(f"test metrics: {json.dumps(result.metrics, default=str)}")
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


def main() -> None:
    """Entry point: run the app, printing CxrError messages without a traceback (exit 2)."""
    try:
        app()
    except CxrError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
