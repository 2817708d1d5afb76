"""The `covid-cxr` command line: thin wrappers that print; the work lives in the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
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
    typer.Option("--option", "-o", help="reader option KEY=VALUE, e.g. -o pneumonia_types=true -o views=[PA,AP]"),
]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    """Configure logging for the whole command."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )
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
        TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    )


def _read(source: Path, reader: str, options: list[str] | None):
    from covid_cxr.data.readers import read_source

    return read_source(source, reader=reader, **parse_options(options))


def _check(result):
    from covid_cxr.data.checks import run_checks

    with progress_bar("decoding") as bar:
        task = bar.add_task("decode", total=len(result.manifest))
        return run_checks(result.manifest, result.problems, progress=lambda done, total: bar.update(task, completed=done))


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
    classes: Annotated[Optional[list[str]], typer.Option("--classes", help="normal, covid, viral, bacterial")] = None,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    shortcut_marker: Annotated[bool, typer.Option(help="burn a corner marker into one class")] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Generate synthetic chest phantoms with lesion and lung masks."""
    from covid_cxr.data.synthetic import synthesize

    with progress_bar("rendering") as bar:
        task = bar.add_task("render", total=n)
        frame = synthesize(out, n, classes=classes, size=size, shortcut_marker=shortcut_marker, seed=seed,
                           progress=lambda done: bar.update(task, completed=done))
    counts = frame["label"].value_counts().to_dict()
    console.print(f"wrote {len(frame)} phantoms to {out} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")


def main() -> None:
    """Entry point: run the app, printing CxrError messages without a traceback (exit 2)."""
    try:
        app()
    except CxrError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
