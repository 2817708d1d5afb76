"""Run configs: YAML presets shipped in the package, a config file on top, then ``key.sub=value`` overrides.

Example:
    >>> cfg = load_config("pinto-vgg16", None, ["train.epochs=3", "model.head.hidden=[32]"])
    >>> cfg.train.epochs, cfg.model.head.hidden
    (3, [32])
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from covid_cxr.config import RunConfig
from covid_cxr.errors import ConfigError

PRESET_SUFFIX = ".yaml"


@dataclass(frozen=True)
class PresetInfo:
    """A preset's name and the one-line description and seed it reproduces."""

    name: str
    description: str
    seed_ref: str


def list_presets() -> list[PresetInfo]:
    """Every shipped preset, sorted by name."""
    return [
        PresetInfo(name, str(data.get("description", "")), str(data.get("seed_ref", "")))
        for name in sorted(_preset_files())
        for data in [load_preset(name)]
    ]


def load_preset(name: str) -> dict[str, Any]:
    """The raw mapping of preset ``name``; ConfigError listing the presets when unknown."""
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(files))}")
    return _mapping(files[name].read_text(encoding="utf-8"), f"preset {name}")


def load_config(
    preset: str | None = None, config_file: Path | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """A validated RunConfig: the preset, then the config file merged on top, then each override."""
    data: dict[str, Any] = load_preset(preset) if preset else {}
    sources = [f"preset {preset}"] if preset else []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        extra = _mapping(path.read_text(encoding="utf-8"), str(path))
        _check_tree(extra, RunConfig, str(path), ())
        data = _merge(data, extra)
        sources.append(str(path))
    for item in overrides:
        _apply_override(data, item)
    sources += [f"--set {item}" for item in overrides]
    return _validate(data, " + ".join(sources) or "defaults")


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, every field written out (what runs/<name>/config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=1000)


def _preset_files() -> dict[str, Traversable]:
    """Preset name -> YAML file inside the installed package."""
    folder = resources.files("covid_cxr.training") / "presets"
    return {f.name.removesuffix(PRESET_SUFFIX): f for f in folder.iterdir() if f.name.endswith(PRESET_SUFFIX)}


def _mapping(text: str, where: str) -> dict[str, Any]:
    """Parse YAML that must hold a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML{_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """' at line L, column C: problem' from a YAML error, without PyYAML's '<unicode string>' marks."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: {problem}"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``extra`` replaces ``base``."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


_FREE = object()  # a dict-typed field: any key below it is allowed


def _section(model: type[BaseModel], key: str) -> type[BaseModel] | object | None:
    """The pydantic model under ``key`` (Optional unwrapped), _FREE for a dict field, None for a value."""
    annotation = model.model_fields[key].annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        if candidate is dict or typing.get_origin(candidate) is dict:
            return _FREE
    return None


def _unknown(model: type[BaseModel], path: Sequence[str], where: str) -> ConfigError:
    """The error for a key that ``model`` does not have, listing the keys it does have."""
    section = f"in {'.'.join(path[:-1])}" if len(path) > 1 else "at the top level"
    return ConfigError(
        f"{where}: unknown key {'.'.join(path)!r}; valid keys {section}: {', '.join(model.model_fields)}"
    )


def _check_path(path: Sequence[str], where: str) -> None:
    """Raise ConfigError unless ``path`` (train.epochs) names a RunConfig field or lies in a dict field."""
    model: type[BaseModel] | object | None = RunConfig
    for depth, part in enumerate(path):
        if model is _FREE:
            return
        if model is None:
            raise ConfigError(f"{where}: {'.'.join(path[:depth])!r} is a value, not a section")
        if part not in model.model_fields:
            raise _unknown(model, path[: depth + 1], where)
        model = _section(model, part)


def _check_tree(data: dict[str, Any], model: type[BaseModel], where: str, prefix: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first key of ``data`` that ``model`` (recursively) does not have."""
    for key, value in data.items():
        if key not in model.model_fields:
            raise _unknown(model, (*prefix, str(key)), where)
        sub = _section(model, key)
        if isinstance(sub, type) and isinstance(value, dict):
            _check_tree(value, sub, where, (*prefix, key))


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``key.sub=value`` in ``data``; the value is parsed as YAML (``[32]``, ``null``, ``true``)."""
    key, sep, raw = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"override {item!r}: expected key.sub=value, e.g. train.epochs=3")
    _check_path(path, f"override {item!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def _validate(data: dict[str, Any], where: str) -> RunConfig:
    """RunConfig from a mapping; the ConfigError names every invalid field by its dotted path."""
    _check_tree(data, RunConfig, where, ())
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_field_problem(e) for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None


def _field_problem(error: dict[str, Any]) -> str:
    """'train.epochs: Input should be greater than or equal to 1 (got 0)' from one pydantic error."""
    where = ".".join(map(str, error["loc"]))
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = f" (got {given!r})" if error["type"] != "value_error" and not isinstance(given, dict) else ""
    return f"{where}: {message}{shown}"
