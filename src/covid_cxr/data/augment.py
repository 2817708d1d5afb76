"""Keras ImageDataGenerator-style augmentation on normalised tensors, run on the training device."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from covid_cxr.config import AugmentConfig
from covid_cxr.data.preprocess import normalize
from covid_cxr.data.spec import Preprocess


class TensorAugment(nn.Module):
    """Random affine (rotation, shift, shear, zoom), flips and channel shift, drawn per image.

    Works on a normalised float batch (N, C, H, W) on any device. Units follow Keras:
    `rotation` and `shear` in degrees, `width_shift`/`height_shift` as fractions of the side,
    `zoom` as the range [1 - zoom, 1 + zoom], `channel_shift` in 0-255 pixel units (converted with
    the spec's normalisation, clipped to each image's range). Areas uncovered by the affine
    transform are filled with 0, the normalised mean.

    Example:
        >>> aug = TensorAugment(AugmentConfig(rotation=15, horizontal_flip=True), Preprocess(channels=1))
        >>> out = aug(torch.zeros(4, 1, 64, 64))
    """

    def __init__(self, cfg: AugmentConfig, spec: Preprocess) -> None:
        super().__init__()
        self.transforms = nn.Sequential(*_spatial(cfg))
        self.channel_shift = cfg.channel_shift
        self.register_buffer("pixel_step", _pixel_step(spec))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Augment every image of (N, C, H, W) with its own random draw; the input is not modified."""
        out = torch.stack([self.transforms(image) for image in batch])
        return self._shift_channels(out) if self.channel_shift else out

    def _shift_channels(self, batch: torch.Tensor) -> torch.Tensor:
        """Add one random pixel-unit offset per image to all channels, clipped to the image's range."""
        offset = (torch.rand(len(batch), 1, 1, 1, device=batch.device) * 2 - 1) * self.channel_shift
        step = self.pixel_step.to(batch.device)
        lo = batch.amin(dim=(2, 3), keepdim=True)
        hi = batch.amax(dim=(2, 3), keepdim=True)
        return torch.maximum(torch.minimum(batch + offset * step, hi), lo)


def _pixel_step(spec: Preprocess) -> torch.Tensor:
    """(1, C, 1, 1): how much one 0-255 pixel unit moves each normalised channel."""
    probe = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 1, spec.channels)
    black, white = normalize(probe.contiguous(), spec)
    return ((white - black) / 255.0).view(1, spec.channels, 1, 1)


def _spatial(cfg: AugmentConfig) -> list[nn.Module]:
    """The torchvision v2 transforms the config turns on."""
    steps: list[nn.Module] = []
    if cfg.rotation or cfg.width_shift or cfg.height_shift or cfg.shear or cfg.zoom:
        steps.append(
            v2.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.width_shift, cfg.height_shift)
                if cfg.width_shift or cfg.height_shift
                else None,
                scale=(1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom else None,
                shear=cfg.shear or None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if cfg.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.vertical_flip:
        steps.append(v2.RandomVerticalFlip())
    return steps
