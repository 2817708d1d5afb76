"""Lung-field segmentation: a shipped EfficientNet-Lite0 U-Net, its training, masks and plausibility.

Example:
    >>> from covid_cxr.lungs import segment, lung_stats
    >>> mask = segment(image)          # uint8 0/1 at the image's own size
    >>> lung_stats(mask).quality       # "ok" for two plausible lungs
"""

from covid_cxr.lungs.quality import LungStats, clean_mask, lung_stats, overlay
from covid_cxr.lungs.segmenter import LungSegmenter, load_segmenter, segment

__all__ = ["LungSegmenter", "LungStats", "clean_mask", "load_segmenter", "lung_stats", "overlay", "segment"]
