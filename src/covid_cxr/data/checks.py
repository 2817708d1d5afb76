"""Data checks: decode every file, find duplicates, count classes and sources, flag confounding and cues."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covid_cxr.data.acquisition import (
    FLAG_AUC,
    AcquisitionCues,
    check_acquisition,
    cue_summary,
    file_facts,
    print_acquisition,
)
from covid_cxr.data.images import decode_bytes, load_image, read_bytes
from covid_cxr.data.manifest import Problem
from covid_cxr.errors import ImageError
from covid_cxr.io import atomic_write_text

log = logging.getLogger(__name__)

CONFOUNDING_SHARE = 0.95  # a source whose images are at least this share one class is flagged
# phash distances are even (32 of 64 bits set). On radiography-224 re-encoded/cropped copies sit at
# 0-2 while distinct chest X-rays start at 4 (COVID-2110 vs Normal-8378), so 2 is the default.
NEAR_DUPLICATE_DISTANCE = 2
# phash sees only the coarse layout, which chests share: synthetic phantoms of different patients and
# classes fall within distance 2. Each candidate pair is confirmed on fine structure: the second image
# is aligned onto the first (affine ECC on 128x128 thumbnails, so crops and resizes line up), then the
# Sobel gradients of both at 48x48 are correlated. Measured: resized, re-encoded, brightness/contrast-
# changed copies >= 0.994 and radiography-224's COVID-320/999 0.995; phantoms of different patients
# within phash distance 2 (886 pairs among 6,000 phantoms of 64-224 px) <= 0.985; distinct real
# X-rays within phash distance 10 (radiography-224, kermany-224, figure1) <= 0.90.
NEAR_DUPLICATE_CORRELATION = 0.99
_ALIGN_SIZE = 128  # side of the thumbnails aligned before comparison
_DETAIL_SIZE = 48  # side at which their gradients are compared
_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 1e-3)
_HASH_BLOCK = 256  # rows of the pairwise Hamming-distance matrix computed at once


@dataclass
class Unreadable:
    """A manifest row whose file could not be decoded, and why."""

    path: str
    label: str
    reason: str


@dataclass
class DuplicateGroup:
    """Files holding the same (exact) or almost the same (near) image."""

    paths: list[str]
    labels: list[str]

    @property
    def conflicting(self) -> bool:
        """True when the copies carry different labels."""
        return len(set(self.labels)) > 1


@dataclass
class ClassStats:
    """Per-class counts, size range and grey-level statistics of the readable images."""

    label: str
    images: int
    readable: int
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    pixel_mean: float | None = None
    pixel_std: float | None = None


@dataclass
class SourceShare:
    """How much one class depends on its largest source."""

    label: str
    source: str
    share: float


@dataclass
class Confounding:
    """A source whose images are (almost) all of one class: a model can learn the source."""

    source: str
    label: str
    share: float
    images: int


@dataclass
class CheckReport:
    """Everything the checks found; `usable` is False only when no training is possible."""

    n_images: int
    unreadable: list[Unreadable]
    exact_duplicates: list[DuplicateGroup]
    near_duplicates: list[DuplicateGroup]
    near_duplicate_distance: int
    classes: list[ClassStats]
    label_source: dict[str, dict[str, int]]
    class_dependence: list[SourceShare]
    confounded_sources: list[Confounding]
    n_patients: int
    max_images_per_patient: int
    mean_images_per_patient: float
    label_split: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    usable: bool = True
    unusable_reason: str = ""
    acquisition: AcquisitionCues | None = None

    @property
    def n_readable(self) -> int:
        """Number of files that decoded."""
        return self.n_images - len(self.unreadable)

    @property
    def class_counts(self) -> dict[str, int]:
        """Readable images per class."""
        return {c.label: c.readable for c in self.classes}

    @property
    def imbalance_ratio(self) -> float | None:
        """Largest over smallest readable class count (None without readable images)."""
        counts = [n for n in self.class_counts.values() if n > 0]
        return max(counts) / min(counts) if counts else None

    def to_dict(self) -> dict:
        """A JSON-safe dict, including the derived counts."""
        out = asdict(self)
        out.update(
            n_readable=self.n_readable, class_counts=self.class_counts, imbalance_ratio=self.imbalance_ratio
        )
        return out


@dataclass
class _Decoded:
    """What one readable file contributes to the report."""

    width: int
    height: int
    pixel_sum: float
    pixel_sumsq: float
    pixels: int
    phash: int
    format: str
    mode: str
    bit_depth: int


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 grey (H, W) from a decoded (H, W) or (H, W, 3) image."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _inspect_file(path: str) -> _Decoded | str:
    """Decode one file: its statistics, or the reason it cannot be used."""
    try:
        data = read_bytes(path)
        grey = to_grey(decode_bytes(data, path))
    except ImageError as exc:
        return exc.reason
    values = grey.astype(np.float64)
    facts = file_facts(data, path)
    return _Decoded(
        width=int(grey.shape[1]),
        height=int(grey.shape[0]),
        pixel_sum=float(values.sum()),
        pixel_sumsq=float(np.square(values).sum()),
        pixels=int(values.size),
        phash=int(str(imagehash.phash(Image.fromarray(grey))), 16),
        format=facts.format,
        mode=facts.mode,
        bit_depth=facts.bit_depth,
    )


def _inspect_all(
    paths: Sequence[str], progress: Callable[[int, int], None] | None, workers: int
) -> list[_Decoded | str]:
    """Decode every file, in order, reporting progress after each one."""
    results: list[_Decoded | str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, result in enumerate(pool.map(_inspect_file, paths), start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(paths))
    return results


def _components(n: int, edges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Connected-component id of each of n nodes joined by the edges (union-find)."""
    pairs = np.asarray(list(edges), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Index pairs i < j whose 64-bit hashes differ in at most max_distance bits."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(hashes), _HASH_BLOCK):
        block = hashes[start : start + _HASH_BLOCK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, start:])
        rows, cols = np.nonzero(distance <= max_distance)
        keep = rows < cols
        pairs.extend(zip((start + rows[keep]).tolist(), (start + cols[keep]).tolist(), strict=True))
    return pairs


def _thumbnail(path: str) -> np.ndarray:
    """The file as a uint8 grey square of side _ALIGN_SIZE (decoded again: only candidates need one)."""
    grey = to_grey(load_image(path))
    return cv2.resize(grey, (_ALIGN_SIZE, _ALIGN_SIZE), interpolation=cv2.INTER_AREA)


def _gradients(thumb: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm Sobel gradients (x, then y) of a thumbnail at _DETAIL_SIZE; zeros when flat."""
    small = cv2.resize(thumb, (_DETAIL_SIZE, _DETAIL_SIZE), interpolation=cv2.INTER_AREA)
    grad = np.stack([cv2.Sobel(small, cv2.CV_32F, dx, 1 - dx) for dx in (1, 0)]).ravel()
    grad -= grad.mean()
    norm = float(np.linalg.norm(grad))
    return grad / norm if norm > 0 else grad


def _aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Gradient correlation of thumbnails a and b once b is warped onto a (affine ECC)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_AFFINE, _ECC_CRITERIA, None, 3)
    except cv2.error:  # no convergence (flat or unrelated images): compare them unaligned
        pass
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    aligned = cv2.warpAffine(b, warp, a.shape[::-1], flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return float(_gradients(a) @ _gradients(aligned))


def _confirmed(pairs: list[tuple[int, int]], paths: Sequence[str], workers: int) -> list[tuple[int, int]]:
    """The candidate pairs whose aligned gradient correlation reaches NEAR_DUPLICATE_CORRELATION."""
    involved = sorted({i for pair in pairs for i in pair})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        thumbs = dict(zip(involved, pool.map(_thumbnail, [paths[i] for i in involved]), strict=True))
        scores = list(pool.map(lambda pair: _aligned_correlation(thumbs[pair[0]], thumbs[pair[1]]), pairs))
    kept = [pair for pair, score in zip(pairs, scores, strict=True) if score >= NEAR_DUPLICATE_CORRELATION]
    log.info("near duplicates: %d of %d phash candidate pairs confirmed", len(kept), len(pairs))
    return kept


def _groups(frame: pd.DataFrame, ids: np.ndarray) -> list[DuplicateGroup]:
    """DuplicateGroups of the rows sharing an id, for ids held by more than one row."""
    groups = []
    for _, rows in frame.assign(_gid=ids).groupby("_gid", sort=False):
        if len(rows) > 1:
            rows = rows.sort_values("path")
            groups.append(DuplicateGroup(rows["path"].tolist(), rows["label"].astype(str).tolist()))
    return sorted(groups, key=lambda g: g.paths[0])


def _exact_duplicates(readable: pd.DataFrame) -> list[DuplicateGroup]:
    """Groups of readable files with the same SHA-256."""
    return _groups(readable, pd.factorize(readable["sha256"])[0])


def _near_duplicates(readable: pd.DataFrame, max_distance: int, workers: int) -> list[DuplicateGroup]:
    """Groups of readable files with close perceptual hashes and correlated gradients, exact copies aside."""
    distinct = readable.drop_duplicates("sha256")
    hashes = np.array([int(h) for h in distinct["phash"]], dtype=np.uint64)
    pairs = _confirmed(_near_pairs(hashes, max_distance), distinct["path"].astype(str).tolist(), workers)
    component = _components(len(distinct), pairs)
    sha_group = dict(zip(distinct["sha256"], component, strict=True))
    sizes = pd.Series(component).value_counts()
    ids = readable["sha256"].map(sha_group).to_numpy()
    several = np.isin(ids, sizes.index[sizes > 1])  # components holding more than one distinct file
    return _groups(readable[several], ids[several])


def _class_stats(manifest: pd.DataFrame, readable: pd.DataFrame) -> list[ClassStats]:
    """One ClassStats per label in the manifest, sorted by label."""
    stats = []
    for label, rows in manifest.groupby("label", sort=True):
        ok = readable[readable["label"] == label]
        item = ClassStats(label=str(label), images=len(rows), readable=len(ok))
        if len(ok):
            mean = ok["pixel_sum"].sum() / ok["pixels"].sum()
            var = ok["pixel_sumsq"].sum() / ok["pixels"].sum() - mean**2
            item.min_width, item.max_width = int(ok["width"].min()), int(ok["width"].max())
            item.min_height, item.max_height = int(ok["height"].min()), int(ok["height"].max())
            item.pixel_mean, item.pixel_std = float(mean), float(np.sqrt(max(var, 0.0)))
        stats.append(item)
    return stats


def _crosstab(readable: pd.DataFrame, column: str) -> dict[str, dict[str, int]]:
    """label -> value of `column` -> readable image count (zeros left out; empty without the column)."""
    if column not in readable or readable.empty:
        return {}
    table = pd.crosstab(readable["label"].astype(str), readable[column].fillna("").astype(str))
    return {label: {src: int(n) for src, n in row.items() if n > 0} for label, row in table.iterrows()}


def _dependence(table: dict[str, dict[str, int]]) -> list[SourceShare]:
    """For each class, its largest source and the share of the class that source supplies."""
    out = []
    for label, sources in table.items():
        source = max(sources, key=lambda s: (sources[s], s))
        out.append(SourceShare(label, source, sources[source] / sum(sources.values())))
    return out


def _confounding(table: dict[str, dict[str, int]]) -> list[Confounding]:
    """Sources that are (almost) only one class, when there are several sources and classes."""
    by_source: dict[str, dict[str, int]] = {}
    for label, sources in table.items():
        for source, n in sources.items():
            by_source.setdefault(source, {})[label] = n
    if len(by_source) < 2 or len(table) < 2:
        return []
    flagged = []
    for source, labels in sorted(by_source.items()):
        label = max(labels, key=lambda lab: (labels[lab], lab))
        share = labels[label] / sum(labels.values())
        if share >= CONFOUNDING_SHARE:
            flagged.append(Confounding(source, label, share, sum(labels.values())))
    return flagged


def _usability(classes: list[ClassStats]) -> tuple[bool, str]:
    """(usable, reason): unusable without readable images or with fewer than two classes."""
    present = [c.label for c in classes if c.readable > 0]
    if not present:
        return False, "no readable images"
    if len(present) < 2:
        return False, f"only one class has readable images ({present[0]}); at least two are needed"
    return True, ""


def run_checks(
    manifest: pd.DataFrame,
    problems: Sequence[Problem] = (),
    progress: Callable[[int, int], None] | None = None,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
    workers: int = 1,
) -> CheckReport:
    """Decode every file of the manifest; report unreadable files, duplicates, balance, sources and cues."""
    results = _inspect_all(manifest["path"].astype(str).tolist(), progress, workers)
    ok = [isinstance(r, _Decoded) for r in results]
    unreadable = [
        Unreadable(str(row.path), str(row.label), str(res))
        for row, res, good in zip(manifest.itertuples(), results, ok, strict=True)
        if not good
    ]
    decoded = pd.DataFrame(
        [asdict(r) for r in results if isinstance(r, _Decoded)], columns=list(_Decoded.__dataclass_fields__)
    )
    readable = pd.concat(
        [
            manifest[ok].drop(columns=["width", "height"]).reset_index(drop=True),
            decoded.reset_index(drop=True),
        ],
        axis=1,
    )
    classes = _class_stats(manifest, readable)
    table = _crosstab(readable, "source")
    per_patient = manifest["patient_id"].astype(str).value_counts()
    usable, reason = _usability(classes)
    report = CheckReport(
        n_images=len(manifest),
        unreadable=unreadable,
        exact_duplicates=_exact_duplicates(readable),
        near_duplicates=_near_duplicates(readable, near_duplicate_distance, workers),
        near_duplicate_distance=near_duplicate_distance,
        classes=classes,
        label_source=table,
        label_split=_crosstab(readable, "split"),
        class_dependence=_dependence(table),
        confounded_sources=_confounding(table),
        n_patients=int(len(per_patient)),
        max_images_per_patient=int(per_patient.max()) if len(per_patient) else 0,
        mean_images_per_patient=float(per_patient.mean()) if len(per_patient) else 0.0,
        problems=list(problems),
        usable=usable,
        unusable_reason=reason,
        acquisition=check_acquisition(readable),
    )
    _log_summary(report)
    return report


def _log_summary(report: CheckReport) -> None:
    """One log line per notable finding."""
    log.info(
        "checked %d files: %d readable, %d unreadable",
        report.n_images,
        report.n_readable,
        len(report.unreadable),
    )
    for item in report.unreadable:
        log.warning("unreadable: %s: %s", item.path, item.reason)
    for flag in report.confounded_sources:
        log.warning(
            "source %r is %.0f%% %r: possible source/label confounding",
            flag.source,
            100 * flag.share,
            flag.label,
        )
    if not report.usable:
        log.error("data unusable: %s", report.unusable_reason)


def usable_manifest(manifest: pd.DataFrame, report: CheckReport) -> pd.DataFrame:
    """The manifest without the rows whose file could not be decoded."""
    bad = {item.path for item in report.unreadable}
    keep = ~manifest["path"].astype(str).isin(bad)
    if (~keep).any():
        log.warning("dropping %d unreadable file(s) listed in the checks report", int((~keep).sum()))
    return manifest[keep].reset_index(drop=True)


def duplicate_group_ids(manifest: pd.DataFrame, report: CheckReport) -> np.ndarray:
    """A group id per row: rows that are exact or near duplicates of each other share one."""
    paths = manifest["path"].astype(str).tolist()
    first: dict[str, int] = {}
    edges = [(first.setdefault(p, i), i) for i, p in enumerate(paths)]
    for group in report.exact_duplicates + report.near_duplicates:
        members = [first[p] for p in group.paths if p in first]
        edges.extend(pairwise(members))
    return _components(len(paths), edges)


def save_report(report: CheckReport, path: str | Path) -> None:
    """Write the report as JSON (checks.json), atomically."""
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2))


def _fmt(value: float | int | None, digits: int = 1) -> str:
    """A table cell: '-' for missing values, fixed decimals for floats."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _summary_table(report: CheckReport) -> Table:
    """Totals: files, readability, balance, patients, duplicates, problems, verdict."""
    table = Table(title="Data checks", show_header=False)
    conflicts = sum(g.conflicting for g in report.exact_duplicates + report.near_duplicates)
    rows = [
        ("images", report.n_images),
        ("readable", report.n_readable),
        ("unreadable", len(report.unreadable)),
        ("classes", len(report.classes)),
        ("imbalance ratio (max/min)", _fmt(report.imbalance_ratio, 2)),
        ("patients", report.n_patients),
        (
            "images per patient (mean / max)",
            f"{report.mean_images_per_patient:.2f} / {report.max_images_per_patient}",
        ),
        ("exact duplicate groups", len(report.exact_duplicates)),
        (
            f"near-duplicate groups (phash distance <= {report.near_duplicate_distance}, confirmed)",
            len(report.near_duplicates),
        ),
        ("duplicate groups with conflicting labels", conflicts),
        ("reader problems", len(report.problems)),
        ("sources", len({s for row in report.label_source.values() for s in row})),
        (f"acquisition cues (CV AUC, flag > {FLAG_AUC})", cue_summary(report.acquisition)),
        ("usable", "yes" if report.usable else f"[red]NO: {report.unusable_reason}[/red]"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _class_table(report: CheckReport) -> Table:
    """Seed 002's Table 2 (size range per class) plus counts, grey levels and source dependence.

    Narrow enough for 80 columns: the class name is never cut, ranges share one column.
    """
    table = Table(title="Classes", caption="grey: pixel mean ± std (0-255); top source: largest source share")
    table.add_column("class", no_wrap=True)
    for name in ("images", "readable", "width", "height", "grey", "top source"):
        table.add_column(name, justify="right", overflow="fold")
    share = {d.label: f"{100 * d.share:.0f}%" for d in report.class_dependence}
    for c in report.classes:
        table.add_row(
            escape(c.label),
            str(c.images),
            str(c.readable),
            _range(c.min_width, c.max_width),
            _range(c.min_height, c.max_height),
            f"{_fmt(c.pixel_mean, 0)} ± {_fmt(c.pixel_std, 0)}",
            share.get(c.label, "-"),
        )
    return table


def _range(low: float | None, high: float | None) -> str:
    """'224' when both ends agree, else '200-1024'."""
    return _fmt(low) if low == high else f"{_fmt(low)}-{_fmt(high)}"


def _crosstab_table(title: str, counts: dict[str, dict[str, int]]) -> Table:
    """Readable images per label and per value of another column (source, split)."""
    values = sorted({s for row in counts.values() for s in row})
    table = Table(title=title)
    table.add_column("label", no_wrap=True)
    for value in values:
        table.add_column(escape(value), justify="right", overflow="fold")
    for label, row in counts.items():
        table.add_row(escape(label), *(str(row.get(v, 0)) for v in values))
    return table


def _print_listing(
    console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], limit: int
) -> None:
    """Print the first `limit` rows as a table, and how many were left out; nothing when empty."""
    if not rows:
        return
    table = Table(title=title, show_lines=True)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows[:limit]:
        table.add_row(*row)
    console.print(table)
    if len(rows) > limit:
        console.print(f"  ... and {len(rows) - limit} more")


def render_report(report: CheckReport, console: Console, limit: int = 10) -> None:
    """Print the report as rich tables; long listings show the first `limit` rows and a count."""
    console.print(_summary_table(report))
    console.print(_class_table(report))
    console.print(_crosstab_table("Label x source", report.label_source))
    if report.label_split:
        console.print(_crosstab_table("Label x split (given by the source)", report.label_split))
    if report.acquisition is not None:
        print_acquisition(
            report.acquisition, console, {s for row in report.label_source.values() for s in row}
        )
    for flag in report.confounded_sources:
        console.print(
            f"[yellow]confounding: source {flag.source!r} is {100 * flag.share:.1f}% "
            f"{flag.label!r} ({flag.images} images): a model can learn the source[/yellow]"
        )
    _print_listing(
        console,
        "Unreadable files",
        ("path", "label", "reason"),
        [(u.path, u.label, u.reason) for u in report.unreadable],
        limit,
    )
    for title, groups in (
        ("Exact duplicates", report.exact_duplicates),
        ("Near duplicates", report.near_duplicates),
    ):
        rows = [("\n".join(g.paths), ", ".join(sorted(set(g.labels)))) for g in groups]
        _print_listing(console, title, ("files", "labels"), rows, limit)
    _print_listing(
        console, "Reader problems", ("path", "reason"), [(p.path, p.reason) for p in report.problems], limit
    )
