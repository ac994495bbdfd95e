"""From the graph's raw per-image scores to verdicts: pure functions of arrays and the manifest."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vigil.core import calibration as cal
from vigil.core.bundle import Manifest


@dataclass(frozen=True)
class Verdict:
    score: float
    is_anomaly: bool
    scores: dict[str, float]
    thresholds: dict[str, float]
    p_values: dict[str, float]
    flagged_by: list[str]


class Judge:
    """Applies a bundle's calibration to raw scores, at its own or a requested target FPR."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.primary = manifest.primary_score
        self.verdict_scores = list(manifest.calibration.verdict_scores)
        self.calibration = {
            name: np.asarray(values, dtype=np.float64)
            for name, values in manifest.calibration.scores.items()
        }
        self.default_fpr = manifest.calibration.target_fpr
        self._thresholds = lru_cache(maxsize=64)(self._compute_thresholds)
        # For a few images, p-values by `bisect` on plain lists: the same ranks as
        # np.searchsorted(side="left") without its per-call overhead (7 scores per image).
        # Only for calibration data without NaN, where both orders agree.
        self._lists: dict[str, list[float]] | None = None
        if all(not np.isnan(values).any() for values in self.calibration.values()):
            self._lists = {name: values.tolist() for name, values in self.calibration.items()}

    @property
    def fpr_range(self) -> tuple[float, float]:
        """The target FPRs the stored calibration distribution supports."""
        return cal.min_fpr(self.manifest.calibration.n, len(self.verdict_scores)), 0.5

    def thresholds(self, target_fpr: float | None = None) -> dict[str, float]:
        fpr = self.default_fpr if target_fpr is None else target_fpr
        low, high = self.fpr_range
        if not low <= fpr <= high:
            raise cal.CalibrationError(
                f"target_fpr {fpr:g} is outside [{low:.3g}, {high:g}], the range that "
                f"{self.manifest.calibration.n} calibration images support"
            )
        return self._thresholds(fpr)

    def _compute_thresholds(self, fpr: float) -> dict[str, float]:
        return cal.thresholds(self.calibration, fpr, self.verdict_scores)

    def judge(self, raw: dict[str, np.ndarray], target_fpr: float | None = None) -> list[Verdict]:
        """One verdict per image from the graph's score outputs (each shaped [N])."""
        limits = self.thresholds(target_fpr)
        names = list(self.calibration)
        count = len(raw[self.primary])
        columns = {name: np.asarray(raw[name]).tolist() for name in names}  # Python floats
        if self._lists is not None and count <= SMALL_BATCH:
            pcols = {name: _p_values(self._lists[name], columns[name]) for name in names}
        else:
            pcols = {
                name: cal.p_values(self.calibration[name], raw[name]).tolist() for name in names
            }
        primary, verdict_scores = self.primary, self.verdict_scores
        verdicts = []
        for i in range(count):
            scores = {name: columns[name][i] for name in names}
            flagged = [s for s in verdict_scores if scores[s] > limits[s]]
            verdicts.append(
                Verdict(
                    score=scores[primary],
                    is_anomaly=bool(flagged),
                    scores=scores,
                    thresholds=limits,
                    p_values={name: pcols[name][i] for name in names},
                    flagged_by=flagged,
                )
            )
        return verdicts

    def flags(self, raw: dict[str, np.ndarray], target_fpr: float | None = None) -> np.ndarray:
        """The verdict for a whole array of images at once (for evaluation)."""
        limits = self.thresholds(target_fpr)
        flagged = np.zeros(len(raw[self.primary]), dtype=bool)
        for name in self.verdict_scores:
            flagged |= np.asarray(raw[name]) > limits[name]
        return flagged


# Up to this many images per call, p-values come from `bisect` rather than numpy.
SMALL_BATCH = 4


def _p_values(sorted_cal: list[float], scores: list[float]) -> list[float]:
    """`calibration.p_values` for a few scores (calibration without NaN): same floats."""
    n = len(sorted_cal)
    out = []
    for score in scores:
        # searchsorted sorts NaN after every number: no calibration score is >= it.
        rank = n if math.isnan(score) else bisect.bisect_left(sorted_cal, score)
        out.append((1.0 + (n - rank)) / (n + 1.0))
    return out
