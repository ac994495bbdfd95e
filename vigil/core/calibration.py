"""Thresholds and conformal p-values from held-out normal scores: functions of arrays.

For a score s and n sorted calibration scores c, the conformal p-value is
p(s) = (1 + #{c >= s}) / (n + 1). Flagging when p(s) <= alpha keeps the false-positive
rate on new normal images at or below alpha (for exchangeable data). The same rule as
a threshold: flag when s > c[n - k - 1] (0-based), k = floor(alpha (n + 1)) - 1.
When the verdict is the union of several scores, alpha is split evenly (Bonferroni),
so the union still meets the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vigil.core.errors import VigilError


class CalibrationError(VigilError, ValueError):
    """A target FPR that the calibration data cannot support, or bad calibration data."""

    code = "invalid_target_fpr"


def min_fpr(n: int, n_scores: int = 1) -> float:
    """The smallest target FPR that n calibration scores can resolve for a union of n_scores."""
    return n_scores / (n + 1)


def p_values(sorted_cal: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of `scores` against ascending calibration scores."""
    n = len(sorted_cal)
    at_least = n - np.searchsorted(sorted_cal, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)


def threshold(sorted_cal: np.ndarray, alpha: float) -> float:
    """The score above which p <= alpha: flag when score > threshold."""
    n = len(sorted_cal)
    if n == 0:
        raise CalibrationError("no calibration scores")
    k = math.floor(alpha * (n + 1) + 1e-9) - 1
    if k < 0:
        raise CalibrationError(
            f"target FPR {alpha:g} is below 1/(n+1) = {1 / (n + 1):.2g} for n={n} calibration "
            "images; calibrate on more normal images or choose a larger FPR"
        )
    return float(sorted_cal[max(n - k - 1, 0)])


def check_verdict(names: Sequence[str], computed: Sequence[str]) -> list[str]:
    """The verdict's scores, `names` without repeats, each one the model computes."""
    unknown = [name for name in names if name not in computed]
    if unknown or not names:
        raise CalibrationError(
            f"verdict {' '.join(names)}: this model computes no score "
            f"{', '.join(map(repr, unknown))}; choose from {', '.join(computed)}"
        )
    return list(dict.fromkeys(names))


def split_budget(target_fpr: float, verdict_scores: Sequence[str]) -> dict[str, float]:
    """Per-score FPR so that flagging when any verdict score exceeds its threshold meets target."""
    if not verdict_scores:
        raise CalibrationError("the verdict needs at least one score")
    share = target_fpr / len(verdict_scores)
    return {name: share for name in verdict_scores}


def thresholds(
    calibration: dict[str, np.ndarray], target_fpr: float, verdict_scores: Sequence[str]
) -> dict[str, float]:
    """Per-score thresholds: verdict scores at their share of the budget, others at the target."""
    check_fpr(target_fpr, min(len(v) for v in calibration.values()), len(verdict_scores))
    alphas = split_budget(target_fpr, verdict_scores)
    return {
        name: threshold(values, alphas.get(name, target_fpr))
        for name, values in calibration.items()
    }


def check_fpr(target_fpr: float, n: int, n_scores: int = 1) -> None:
    if not 0.0 < target_fpr < 1.0:
        raise CalibrationError(f"target FPR must lie in (0, 1), not {target_fpr:g}")
    lowest = min_fpr(n, n_scores)
    if target_fpr < lowest:
        raise CalibrationError(
            f"target FPR {target_fpr:g} is below {lowest:.2g}, the smallest that {n} calibration "
            f"images support for {n_scores} verdict score(s)"
        )


def sorted_scores(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise CalibrationError("calibration scores must be a finite 1-D array")
    return np.sort(values)


def supported_target(target_fpr: float, n: int, n_scores: int = 1) -> tuple[float, str | None]:
    """`target_fpr`, or when n calibration images cannot resolve it the nearest target they
    can (rounded up, so still supported), with a sentence saying so."""
    check_fpr(target_fpr, 10**9, n_scores)  # a rate in (0, 1) at all
    lowest = min_fpr(n, n_scores)
    if target_fpr >= lowest:
        return target_fpr, None
    nearest = math.ceil(lowest * 10_000) / 10_000
    return nearest, (
        f"target FPR {target_fpr:g} is below {lowest:.3g}, the smallest that {n} calibration "
        f"images support; calibrated for {nearest:g} instead (more normal images lower it)"
    )
