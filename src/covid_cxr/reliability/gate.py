"""The input gate: cheap checks on the decoded image, before the classifier, each with a reason code.

Codes: ``not_greyscale`` (a colour photo: mean distance of a pixel from its grey value above
``MAX_CHROMA`` on 0..255), ``too_small`` (shorter side below half the model's input, at most 128 px),
``likely_inverted`` (the mediastinum is darker than the lung fields, as a raw MONOCHROME1 image shows:
on 176 real radiographs of four datasets the mediastinum was 4.8-60 grey levels brighter, and on their
negatives as much darker) and ``not_frontal_chest`` (the shipped lung segmenter does not find two
plausible lungs, one either side of the midline: it found them on 102 of 103 real radiographs of four
datasets and on 23 of 24 photographs, CT/MR slices, noise and text pages it did not). A gated image is
still classified but its result says to abstain. The frontal check runs only when asked (``frontal``):
it is the slow one (a segmentation network); skipped, it is listed under ``unavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

MAX_CHROMA = 6.0
MIN_SIDE_CAP = 128
FRONTAL_SIDE = 256  # the lung check segments a copy at most this large
_GRID = 64
REASONS = ("not_greyscale", "too_small", "likely_inverted", "not_frontal_chest")
UNAVAILABLE = ("not_frontal_chest",)


@dataclass
class GateResult:
    """The reason codes an image failed on, and the checks that could not run."""

    reasons: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=lambda: list(UNAVAILABLE))

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.reasons

    def as_dict(self) -> dict[str, list[str]]:
        """{'reasons': [...], 'unavailable': [...]} for JSON."""
        return {"reasons": list(self.reasons), "unavailable": list(self.unavailable)}


def check_image(
    image: np.ndarray, input_size: int, frontal: bool = False, lungs: np.ndarray | None = None
) -> GateResult:
    """Run the checks on a decoded uint8 (H, W) or (H, W, 3) image; the frontal one with `frontal` or
    when the image's lung mask (`lungs`, 0/1 from ``covid_cxr.lungs.segment``) is already at hand."""
    result = GateResult(unavailable=[] if frontal or lungs is not None else list(UNAVAILABLE))
    if chroma(image) > MAX_CHROMA:
        result.reasons.append("not_greyscale")
    if min(image.shape[:2]) < min(input_size, 2 * MIN_SIDE_CAP) / 2:
        result.reasons.append("too_small")
    if mediastinum_contrast(image) < 0:
        result.reasons.append("likely_inverted")
    if frontal or lungs is not None:
        from covid_cxr.lungs import lung_stats, segment  # the segmenter loads only when asked

        if lung_stats(segment(_shrunk(image)) if lungs is None else lungs).quality != "ok":
            result.reasons.append("not_frontal_chest")
    return result


def _shrunk(image: np.ndarray) -> np.ndarray:
    """The image at most FRONTAL_SIDE px on its longer side: the lung check reads shares of the image,
    and a 1024 px radiograph's full-size mask took 80 ms against 25 ms at 256 px."""
    scale = FRONTAL_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


def chroma(image: np.ndarray) -> float:
    """Mean absolute distance of each channel from the pixel's channel mean (0 for a grey image)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return 0.0
    rgb = image[..., :3].astype(np.float32)
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())


def mediastinum_contrast(image: np.ndarray) -> float:
    """Mean grey level of the central column minus that of the two lung fields, on a 64 x 64 copy."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    grey = (
        image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    )
    g = cv2.resize(np.ascontiguousarray(grey), (_GRID, _GRID), interpolation=cv2.INTER_AREA).astype(
        np.float32
    )
    mediastinum = g[13:51, 26:38].mean()
    lungs = (g[13:45, 8:22].mean() + g[13:45, 42:56].mean()) / 2
    return float(mediastinum - lungs)
