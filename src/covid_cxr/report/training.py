"""The configuration and training sections of the report: config.yaml, curves, LR finder, epochs."""

from __future__ import annotations

import pandas as pd

from covid_cxr.report.format import fmt, missing
from covid_cxr.report.images import png_uri
from covid_cxr.report.run_files import RunFiles, read_json, read_optional
from covid_cxr.training.lr_find import PLOT_NAME as LR_FIND_PNG


def config_section(files: RunFiles) -> dict:
    """The resolved config.yaml, verbatim."""
    if files.config_text is None:
        return missing("no config.yaml in the run folder")
    return {"yaml": files.config_text}


def training_section(files: RunFiles) -> dict:
    """Training curves, the LR finder plot, per-epoch metrics and the best checkpoint's scores."""
    run = files.paths
    curves, lr_plot = png_uri(run.curves), png_uri(run.root / LR_FIND_PNG)
    epochs = read_optional(files, run.metrics_csv, pd.read_csv)
    tested = read_optional(files, run.test_metrics, read_json)
    if curves is None and epochs is None and tested is None:
        return missing("no curves.png, metrics.csv or test_metrics.json in the run folder")
    return {
        "curves": curves,
        "lr_find": lr_plot,
        "epochs_header": [] if epochs is None else list(epochs.columns),
        "epochs": []
        if epochs is None
        else [[fmt(v, 4) for v in row] for row in epochs.itertuples(index=False)],
        "best": [] if tested is None else [(k, fmt(v, 4)) for k, v in tested.items()],
    }
