"""Weights from a file: a state dict of a backbone or of a whole Classifier (Lightning checkpoints too).

A whole-model file is recognised by its ``backbone.`` keys, under any prefix (``model.backbone.``
in a Lightning checkpoint); the backbone part must fit exactly, the head part is used when it fits.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from covid_cxr.errors import ConfigError

if TYPE_CHECKING:
    from covid_cxr.models.zoo import Classifier

log = logging.getLogger(__name__)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.pth/.ckpt file (a Lightning checkpoint's ``state_dict`` included)."""
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"{path}: not a readable PyTorch state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _sections(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone, head) parts of a whole-model state dict (any prefix before ``backbone.``) or (state, {})."""
    marked = next((key for key in state if "backbone" in key.split(".")), None)
    if marked is None:
        return state, {}
    parts = marked.split(".")
    prefix = ".".join(parts[: parts.index("backbone")])
    prefix = f"{prefix}." if prefix else ""

    def under(section: str) -> dict[str, torch.Tensor]:
        start = f"{prefix}{section}."
        return {k[len(start) :]: v for k, v in state.items() if k.startswith(start)}

    return under("backbone"), under("head")


def _mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Human-readable key and shape differences between a module and a state dict ('' when none)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        (what, keys)
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    return "; ".join(
        f"{what} {len(keys)}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in problems
    )


def load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load the backbone part of ``state`` strictly, with a ConfigError that lists the differences."""
    part, _ = _sections(state)
    problem = _mismatch(backbone, part)
    if problem:
        raise ConfigError(f"{what}: weights do not fit ({problem})")
    backbone.load_state_dict(part)


def load_model_file(model: Classifier, path: Path) -> None:
    """Backbone weights (required) and head weights (when present and of the same shape) from ``path``."""
    state = read_state(path)
    load_backbone_state(model.backbone, state, f"{path} ({model.arch} backbone)")
    _, head = _sections(state)
    if head and not _mismatch(model.head, head):
        model.head.load_state_dict(head)
    elif head:
        log.warning(
            "%s: head weights do not fit (%s); the head starts fresh", path, _mismatch(model.head, head)
        )
