"""What travels with every prediction: the prediction set, the OOD score and flag, the gate and abstain."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covid_cxr.bundle_info import OOD_FORMAT, BundleInfo
from covid_cxr.reliability.conformal import prediction_sets
from covid_cxr.reliability.gate import GateResult
from covid_cxr.reliability.ood import OodDetector

log = logging.getLogger(__name__)
NO_DETECTOR = "bundle has no OOD detector"


@dataclass
class Reliability:
    """The bundle's OOD detector and conformal record (either may be None for an older bundle)."""

    info: BundleInfo
    detector: OodDetector | None
    note: str = NO_DETECTOR  # what `ood` says when there is no detector to score with

    @classmethod
    def from_bundle(cls, folder: str | Path, info: BundleInfo) -> Reliability:
        """Read ood.npz when bundle.json lists a detector of the current format (an older one is set
        aside: its threshold does not hold for today's score)."""
        from covid_cxr.bundle import load_ood_arrays

        if info.ood is not None and info.ood.format != OOD_FORMAT:
            note = (
                f"the bundle's OOD detector is of an older format ({info.ood.format}); "
                "refit it with covid-cxr reliability RUN"
            )
            log.warning("%s: %s", folder, note)
            return cls(info.model_copy(update={"ood": None}), None, note)
        arrays = load_ood_arrays(folder, info)
        detector = OodDetector(info.ood.method, arrays) if info.ood and arrays is not None else None  # type: ignore[arg-type]
        return cls(info, detector)

    def assess(
        self, probs: np.ndarray, features: np.ndarray | None, gates: list[GateResult]
    ) -> list[dict[str, Any]]:
        """One dict per image: prediction_set, ood {score, threshold, flagged}, gate, abstain."""
        scores = self.detector.score(features) if self.detector is not None and features is not None else None
        conformal = self.info.conformal
        sets = prediction_sets(probs, conformal.qhat, conformal.method) if conformal else None  # type: ignore[arg-type]
        classes = self.info.class_names
        out = []
        for i, gate in enumerate(gates):
            ood = self._ood(None if scores is None else float(scores[i]))
            members = None if sets is None else [c for c, keep in zip(classes, sets[i], strict=True) if keep]
            reasons = [*gate.reasons, *(["ood"] if ood["flagged"] else [])]
            if members is not None and len(members) != 1:
                reasons.append("empty_set" if not members else "ambiguous_set")
            out.append(
                {
                    "prediction_set": members,
                    "ood": ood,
                    "gate": gate.as_dict(),
                    "abstain": bool(reasons),
                    "abstain_reasons": reasons,
                }
            )
        return out

    def _ood(self, score: float | None) -> dict[str, Any]:
        """{score, threshold, flagged}; all None when the bundle has no detector (says so in `note`)."""
        if score is None or self.info.ood is None:
            return {"score": None, "threshold": None, "flagged": None, "note": self.note}
        flagged = not math.isfinite(score) or score > self.info.ood.threshold
        return {"score": score, "threshold": self.info.ood.threshold, "flagged": bool(flagged)}
