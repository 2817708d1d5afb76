"""Frozen backbone, no augmentation: compute backbone features once, then train only the head on them."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from covid_cxr.config import RunConfig
from covid_cxr.data.preprocess import normalize
from covid_cxr.data.spec import Preprocess

log = logging.getLogger(__name__)


def use_cached_features(cfg: RunConfig) -> bool:
    """True when the backbone is frozen whole, nothing is augmented and the config allows the cache."""
    return cfg.model.freeze == "all" and not cfg.augment.active and cfg.train.cache_features


def feature_device(accelerator: str) -> torch.device:
    """The device for the one feature pass: CUDA when available and not ruled out, else CPU."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def backbone_features(
    backbone: nn.Module,
    images: np.ndarray,
    spec: Preprocess,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """float32 `backbone.forward_features` of every uint8 (N, S, S, C) image, in eval mode, on the CPU."""
    was_training = backbone.training
    home = next(backbone.parameters()).device
    backbone.eval().to(device)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        x = normalize(batch, spec).contiguous(memory_format=torch.channels_last)
        chunks.append(backbone.forward_features(x).float().cpu())
    backbone.train(was_training).to(home)
    features = torch.cat(chunks)
    log.info("cached backbone features %s for %d images", tuple(features.shape[1:]), len(features))
    return features
