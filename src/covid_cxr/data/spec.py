"""The Preprocess spec: one description of how a raw image becomes a model input."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Clahe(BaseModel):
    """Contrast-limited adaptive histogram equalisation (OpenCV)."""

    model_config = ConfigDict(extra="forbid")
    clip_limit: float = Field(2.0, gt=0)
    tile_grid: int = Field(8, ge=1)


class Preprocess(BaseModel):
    """How an image is prepared; travels inside the bundle so every stage applies the same steps."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(224, ge=8, description="output width and height in pixels")
    keep_aspect: bool = Field(False, description="pad to square instead of stretching")
    channels: Literal[1, 3] = 3
    white_balance: float | None = Field(
        None, ge=0, lt=50, description="per-channel percentile stretch (seed 002: 0.05 = 0.05 %); null = off"
    )
    clahe: Clahe | None = None
    lungs: Literal["none", "crop", "mask"] = Field(
        "none",
        description="crop: to the lungs' box plus a margin; mask: crop, fill outside the lungs",
    )
    normalize: Literal["imagenet", "dataset", "unit"] = "unit"
    mean: tuple[float, ...] | None = Field(None, description="per-channel mean in [0, 1]; set for 'dataset'")
    std: tuple[float, ...] | None = Field(None, description="per-channel std in [0, 1]; set for 'dataset'")

    def cache_key(self) -> str:
        """Hash of the fields that change the cached uint8 image (not the normalisation)."""
        fields = self.model_dump(include={"size", "keep_aspect", "channels", "white_balance", "clahe"})
        if self.lungs != "none":  # keeps the keys of existing caches
            fields["lungs"] = self.lungs
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
