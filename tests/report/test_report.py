"""The self-contained HTML report: sections, embedded figures, offline, escaping, missing pieces, Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape
from PIL import Image

from covid_cxr.config import RunConfig
from covid_cxr.data.synthetic import synthesize
from covid_cxr.evaluation.evaluate import evaluate_run
from covid_cxr.evaluation.plots import FIGURES
from covid_cxr.report import NOTICE, SECTIONS, build_report
from covid_cxr.training.train import train_run
from tests.conftest import chromium_page

PER_CLASS = 2
DATA_URI_IMG = '<img src="data:image/png;base64,'
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 phantoms at 48 px, the seed-004 ConvNet trained 2 epochs, evaluated when the evaluation exists."""
    root = tmp_path_factory.mktemp("report")
    synthesize(root / "data", n=90, size=48, seed=3)
    cfg = RunConfig.model_validate(
        {
            "name": "report-test",
            "preprocess": {"size": 48, "channels": 1, "normalize": "dataset"},
            "model": {"arch": "convnet", "head": {"pooling": "avg4_flatten", "hidden": [32]}},
            "optim": {"lr": 3e-3},
            "data": {"test_fraction": 0.3},
            "train": {"epochs": 2, "batch_size": 32, "accelerator": "cpu", "seed": 1},
        }
    )
    train_run(cfg, root / "data", root / "run", progress=False, cache_dir=root / "cache")
    evaluate_run(root / "run", bootstrap=200, gallery_per_class=PER_CLASS)
    return root / "run"


@pytest.fixture(scope="module")
def report(run_dir: Path) -> tuple[Path, str]:
    path = build_report(run_dir)
    return path, path.read_text(encoding="utf-8")


@pytest.fixture
def evaluated(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluation" / "metrics.json").read_text())


class _TagChecker(HTMLParser):
    """Checks that every non-void element is closed, in order; records the images' src attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if "id" in values:
            self.ids.append(values["id"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()


def _parse(html: str) -> _TagChecker:
    checker = _TagChecker()
    checker.feed(html)
    checker.close()
    return checker


def _section(html: str, key: str) -> str:
    """The HTML of one <section id=key>."""
    start = html.index(f'<section id="{key}">')
    return html[start : html.index("</section>", start)]


def _expected_gallery_images(run_dir: Path, classes: list[str]) -> int:
    """Right and wrong predictions per class in predictions.csv, each capped at PER_CLASS."""
    frame = pd.read_csv(run_dir / "evaluation" / "predictions.csv")
    total = 0
    for cls in classes:
        rows = frame[frame["true_class"] == cls]
        right = int((rows["predicted"] == cls).sum())
        total += min(PER_CLASS, right) + min(PER_CLASS, len(rows) - right)
    return total


def test_report_has_notice_sections_classes_and_is_well_formed(
    report: tuple[Path, str], run_dir: Path
) -> None:
    path, html = report
    assert path == run_dir / "report.html"
    assert NOTICE in html
    for key, heading in SECTIONS.items():
        assert f'<section id="{key}">' in html
        assert f"<h2>{heading}</h2>" in html
    for cls in ("covid", "normal", "viral"):
        assert f'<th scope="row">{cls}</th>' in html
    assert "<h1>report-test</h1>" in html
    parsed = _parse(html)
    assert parsed.errors == [] and parsed.stack == []
    assert len(parsed.ids) == len(set(parsed.ids))


def test_every_image_is_an_embedded_png(report: tuple[Path, str], run_dir: Path, evaluated: dict) -> None:
    _, html = report
    images = _parse(html).images
    classes = evaluated["metrics"]["classes"]
    expected = 1 + len(FIGURES) + _expected_gallery_images(run_dir, classes)  # curves, evaluation, gallery
    assert html.count(DATA_URI_IMG) == len(images) == expected
    for src in images:
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        with Image.open(io.BytesIO(data)) as png:
            assert png.format == "PNG" and min(png.size) >= 32
    assert _section(html, "gallery").count(DATA_URI_IMG) == expected - 1 - len(FIGURES)


def test_nothing_is_loaded_from_outside(report: tuple[Path, str]) -> None:
    _, html = report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"url\(|@import|@font-face|<script|<link", html, re.IGNORECASE)


def test_numbers_match_the_run_files(report: tuple[Path, str], run_dir: Path, evaluated: dict) -> None:
    _, html = report
    manifest = pd.read_csv(run_dir / "manifest.csv")
    counts = pd.crosstab(manifest["label"], manifest["split"])
    splits = _section(html, "splits")
    for label, row in counts.iterrows():
        cells = "".join(f"<td>{row[s]}</td>" for s in ("train", "val", "test"))
        assert f'<th scope="row">{label}</th>{cells}<td>{row.sum()}</td>' in splits
    assert splits.count('badge-ok">OK<') == 3  # patients, identical files, duplicate groups
    head = evaluated["metrics"]["headline"]
    ci = evaluated["intervals"]["values"]["accuracy"]
    assert f"accuracy {head['accuracy']:.3f} ({ci['lower']:.3f}–{ci['upper']:.3f})" in html
    cal = evaluated["calibration"]
    assert f"{cal['ece_before']:.3f} → {cal['ece_after']:.3f}" in _section(html, "evaluation")
    shortcuts = _section(html, "shortcuts")
    for key in ("lungs_hidden", "border_crop"):
        verdict = evaluated["shortcuts"][key]["verdict"]
        assert str(escape(verdict)) in shortcuts
    assert "LR finder not run" in _section(html, "training")


def test_without_evaluation_sections_say_not_run(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "unevaluated"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("evaluation*", "report.html"))
    html = build_report(copy).read_text(encoding="utf-8")
    assert "Not run." in _section(html, "evaluation")
    assert "lungs-hidden and border-crop checks were not run" in _section(html, "shortcuts")
    assert "Label × source confounding (training data)" in _section(html, "shortcuts")
    assert "Not run." in _section(html, "gallery")
    assert html.count(DATA_URI_IMG) == 1  # the training curves only
    assert _parse(html).errors == []


def test_an_empty_or_broken_run_folder_still_gives_a_report(tmp_path: Path) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    (run / "checks.json").write_text("{ not json")
    (run / "config.yaml").write_text('name: "<script>alert(1)</script>"\n')
    html = build_report(run).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    assert "checks.json" in html and "Files that could not be read" in html
    for key in ("checks", "splits", "training", "evaluation", "gallery"):
        assert "Not run." in _section(html, key), key
    assert html.count(DATA_URI_IMG) == 0
    assert _parse(html).errors == []


def test_a_missing_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    from covid_cxr.errors import CxrError

    with pytest.raises(CxrError, match="run not found"):
        build_report(tmp_path / "nope")


def test_the_report_only_reads_what_the_stages_wrote(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("bundle", "checkpoints", "report.html"))
    (copy / "evaluation" / "gallery.json").unlink()
    html = build_report(copy).read_text(encoding="utf-8")
    assert "no gallery.json in evaluation/" in _section(html, "gallery")
    assert (copy / "report.html").is_file() and not (run_dir / "copy").exists()


def test_flags_are_shown_as_flags_and_listed_as_limitations(
    run_dir: Path, evaluated: dict, tmp_path: Path
) -> None:
    copy = tmp_path / "flagged"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("bundle", "checkpoints", "report.html"))
    checks = json.loads((copy / "checks.json").read_text())
    checks["confounded_sources"] = [{"source": "hospital-a", "label": "covid", "share": 1.0, "images": 30}]
    (copy / "checks.json").write_text(json.dumps(checks))
    metrics = json.loads((copy / "evaluation" / "metrics.json").read_text())
    verdict = "FLAG: with the lungs blanked the model still tells 'covid' apart (ROC AUC 0.97)"
    metrics["shortcuts"]["lungs_hidden"].update(flag=True, verdict=verdict)
    metrics["shortcuts"]["flags"] = [verdict]
    (copy / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    html = build_report(copy).read_text(encoding="utf-8")
    assert 'badge-flag">FLAG<' in _section(html, "shortcuts")
    assert "source &#39;hospital-a&#39; is 100% &#39;covid&#39;" in _section(html, "checks")
    card = _section(html, "model_card")
    assert f"Shortcut check (test split): {escape(verdict)}" in card and "hospital-a" in card
    assert "<dt>Shortcut flags</dt><dd>test split: FLAG lungs hidden" in html


def test_chromium_opens_the_report_offline_without_errors(report: tuple[Path, str]) -> None:
    path, _ = report
    with chromium_page(1280, 900) as (page, problems):
        page.on(
            "request",
            lambda req: None if req.url.startswith(("file:", "data:")) else problems.append(req.url),
        )
        page.goto(path.as_uri())
        loaded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        total = page.evaluate("document.images.length")
        page.screenshot(path="/tmp/report.png", full_page=True)
    assert problems == []
    assert total > 0 and loaded == total


def test_a_tiny_external_dataset_missing_a_class_renders_beside_the_test_split(
    run_dir: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    manifest = pd.read_csv(run / "manifest.csv")
    test = manifest[(manifest["split"] == "test") & manifest["label"].isin(["covid", "normal"])]
    picked = pd.concat([test[test["label"] == "covid"].head(3), test[test["label"] == "normal"].head(2)])
    for row in picked.itertuples():  # 5 images, no 'viral', one source, no lesion masks
        (tmp_path / "tiny" / row.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(row.path, tmp_path / "tiny" / row.label / Path(row.path).name)
    evaluate_run(run, tmp_path / "tiny", bootstrap=50, gallery_per_class=1)
    html = build_report(run).read_text(encoding="utf-8")
    evaluation = _section(html, "evaluation")
    assert "external: tiny" in evaluation and "test split" in evaluation
    assert "<td>5</td>" in evaluation and "no images" in evaluation  # sensitivity of the absent class
    assert "external: tiny" in _section(html, "shortcuts")
    assert "tiny" in _section(html, "model_card")
    assert _parse(html).errors == []
