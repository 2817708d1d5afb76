"""Explanations: class activation maps, overlays and their quality on phantoms."""

from covid_cxr.explain.cam import (
    METHODS,
    CamModel,
    Explanation,
    GuidedGradCAM,
    default_layer,
    explain,
)
from covid_cxr.explain.figure import explain_files
from covid_cxr.explain.quality import energy_in_mask, explanation_quality, faithfulness, pointing_game

__all__ = [
    "METHODS",
    "CamModel",
    "Explanation",
    "GuidedGradCAM",
    "default_layer",
    "energy_in_mask",
    "explain",
    "explain_files",
    "explanation_quality",
    "faithfulness",
    "pointing_game",
]
