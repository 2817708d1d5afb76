"""Several data sources in one manifest: class mapping, source names, namespaced patients, holdout splits.

Each source is read with its own reader and options (:class:`covid_cxr.config.SourceConfig`), its
labels mapped (``No_findings=Normal``; ``Pneumonia=-`` drops the class), and, when there are several,
its rows take the source's name in ``source`` and their patient ids are prefixed ``<name>:`` so two
sources' ``person1`` never merge. Duplicates across sources are found by the checks on the merged
manifest and kept in one split by :func:`covid_cxr.data.splits.split_manifest`'s ``groups``.

Example:
    >>> result = read_sources([SourceConfig(path="radiography-224"), SourceConfig(path="kermany-224")])
    >>> result.manifest.groupby(["source", "label"]).size()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from covid_cxr.config import DataConfig, SourceConfig
from covid_cxr.data.manifest import ReadResult
from covid_cxr.data.readers import read_source
from covid_cxr.data.splits import group_ids, split_manifest
from covid_cxr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DROP = "-"  # --map LABEL=- drops the label's images


def parse_class_map(items: Sequence[str] | None) -> dict[str, str]:
    """'FROM=TO' strings as a dict; ConfigError for an item without '=' or with an empty side."""
    mapping = {}
    for item in items or []:
        label, sep, target = item.partition("=")
        if not sep or not label.strip() or not target.strip():
            raise ConfigError(f"--map {item!r}: expected LABEL=CLASS (or LABEL=- to drop the label)")
        mapping[label.strip()] = target.strip()
    return mapping


def apply_class_map(manifest: pd.DataFrame, mapping: dict[str, str], where: str) -> pd.DataFrame:
    """The manifest with labels renamed by `mapping` and the rows of labels mapped to '-' dropped."""
    if not mapping:
        return manifest
    labels = manifest["label"].astype(str)
    unused = sorted(set(mapping) - set(labels))
    if unused:
        log.warning("%s: --map %s matches no label; its labels are %s", where, unused, sorted(set(labels)))
    for label, target in mapping.items():
        n = int((labels == label).sum())
        if n:
            done = "dropped" if target == DROP else f"-> {target!r}"
            log.info("%s: %d %r images %s", where, n, label, done)
    renamed = labels.map(lambda v: mapping.get(v, v))
    return manifest.assign(label=renamed)[renamed != DROP].reset_index(drop=True)


def source_name(spec: SourceConfig) -> str:
    """The source's name: as given, else its folder's name (a CSV file's stem)."""
    if spec.name:
        return spec.name
    path = Path(spec.path).expanduser()
    return path.stem if path.is_file() else path.resolve().name


def data_sources(data: DataConfig) -> list[SourceConfig]:
    """The run's sources: ``data.sources``, else the one ``data.source`` with its reader, options and map."""
    if data.sources:
        return list(data.sources)
    if data.source is None:
        raise ConfigError("no training data: pass --data or set data.source (or data.sources) in the config")
    return [SourceConfig(path=data.source, reader=data.reader, options=data.reader_options, map=data.map)]


def read_sources(specs: Sequence[SourceConfig]) -> ReadResult:
    """Read and map every source; with several, name each row's source and namespace its patient ids."""
    names = [source_name(s) for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"two data sources are named {repeated}: give each a distinct name")
    frames, problems, counts = [], [], {}
    for spec, name in zip(specs, names, strict=True):
        result = read_source(spec.path, reader=spec.reader, **spec.options)
        frame = apply_class_map(result.manifest, spec.map, name)
        if len(specs) > 1:
            frame = _namespaced(frame, name)
        frames.append(frame)
        problems += result.problems
        counts.update({f"{name}: {k}" if len(specs) > 1 else k: v for k, v in result.counts.items()})
    if any(f.empty for f in frames):
        empty = [n for n, f in zip(names, frames, strict=True) if f.empty]
        raise DataError(f"data sources {empty} have no images left after --map")
    return ReadResult(_given_split_or_none(pd.concat(frames, ignore_index=True), frames), problems, counts)


def _namespaced(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows with `source` set to the source's name and patient ids prefixed '<name>:'."""
    patients = frame["patient_id"]
    named = patients.where(patients.isna() | (patients.astype(str) == ""), name + ":" + patients.astype(str))
    return frame.assign(source=name, patient_id=named)


def _given_split_or_none(merged: pd.DataFrame, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The merged rows, without the given split column unless every source provides one."""
    if "split" not in merged:
        return merged
    if all("split" in f and f["split"].fillna("").astype(str).ne("").all() for f in frames):
        return merged
    log.info("not every source provides its own split: splitting all sources afresh")
    return merged.drop(columns="split")


def holdout_split(
    manifest: pd.DataFrame, source: str, data: DataConfig, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """The whole `source` as the test split; the other sources split into train and val.

    Rows of other sources that share a patient or duplicate group with the held-out source are
    dropped (logged), so nothing trains on a copy of a test image; test images of classes that no
    other source has are dropped too, since the model cannot learn them.
    """
    sources = manifest["source"].astype(str)
    test = (sources == source).to_numpy()
    if not test.any():
        raise DataError(
            f"--holdout-source {source!r} is not a source of the data; its sources: {sorted(set(sources))}"
        )
    if test.all():
        raise DataError(f"--holdout-source {source!r} is the only source: nothing is left to train on")
    grp = group_ids(manifest, data.group_by_patient, groups)
    tainted = np.isin(grp, grp[test]) & ~test
    if tainted.any():
        log.warning(
            "dropped %d training images that duplicate or share a patient with %s",
            tainted.sum(),
            source,
        )
    rest = ~test & ~tainted
    known = set(manifest["label"].astype(str)[rest])
    unknown = test & ~manifest["label"].astype(str).isin(known).to_numpy()
    if unknown.any():
        dropped = manifest["label"][unknown].value_counts().to_dict()
        log.warning("held-out %s: dropped test images of classes no other source has: %s", source, dropped)
    train = split_manifest(
        manifest[rest],
        test_fraction=0.0,
        val_fraction=data.val_fraction,
        group_by_patient=data.group_by_patient,
        seed=data.seed,
        use_given_split=False,
        groups=None if groups is None else np.asarray(groups)[rest],
    )
    held_out = manifest[test & ~unknown].assign(split="test")
    log.info("held out source %s: %d test images", source, len(held_out))
    return pd.concat([train, held_out], ignore_index=True)
