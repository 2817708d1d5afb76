"""Explanations: class activation maps, overlays and their quality on phantoms."""

from covid_cxr.explain.cam import (
    METHODS,
    CamModel,
    Explanation,
    GuidedGradCAM,
    default_layer,
    explain,
    explain_batch,
)
from covid_cxr.explain.quality import energy_in_mask, explanation_quality, faithfulness, pointing_game

__all__ = [
    "METHODS",
    "CamModel",
    "Explanation",
    "GuidedGradCAM",
    "default_layer",
    "energy_in_mask",
    "explain",
    "explain_batch",
    "explanation_quality",
    "faithfulness",
    "pointing_game",
]
