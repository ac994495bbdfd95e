import numpy as np
import pytest

from vigil.core import calibration as cal


def test_p_values_are_conformal_ranks() -> None:
    sorted_cal = np.arange(1.0, 10.0)  # 1..9, n = 9
    p = cal.p_values(sorted_cal, np.array([0.5, 1.0, 5.0, 9.0, 9.5]))
    # (1 + #{c >= s}) / (n + 1)
    assert np.allclose(p, [10 / 10, 10 / 10, 6 / 10, 2 / 10, 1 / 10])


def test_threshold_agrees_with_p_values() -> None:
    rng = np.random.default_rng(0)
    sorted_cal = np.sort(rng.normal(size=999))
    for alpha in (0.002, 0.01, 0.05, 0.2):
        t = cal.threshold(sorted_cal, alpha)
        probe = np.concatenate([sorted_cal, sorted_cal + 1e-9, rng.normal(size=2000)])
        flagged_by_threshold = probe > t
        flagged_by_p = cal.p_values(sorted_cal, probe) <= alpha
        assert np.array_equal(flagged_by_threshold, flagged_by_p)


def test_threshold_is_the_known_quantile() -> None:
    sorted_cal = np.arange(1.0, 100.0)  # n = 99: floor(0.05 * 100) - 1 = 4 scores may lie above
    assert cal.threshold(sorted_cal, 0.05) == 95.0
    assert cal.threshold(sorted_cal, 0.01) == 99.0  # only a score above every calibration score


def test_realised_fpr_meets_the_target_on_new_normals() -> None:
    rng = np.random.default_rng(1)
    sorted_cal = np.sort(rng.lognormal(size=2000))
    fresh = rng.lognormal(size=200_000)
    for alpha in (0.01, 0.05):
        realised = float((fresh > cal.threshold(sorted_cal, alpha)).mean())
        assert abs(realised - alpha) < 0.006


def test_union_budget_keeps_the_union_at_the_target() -> None:
    rng = np.random.default_rng(2)
    names = ["a", "b", "c"]
    calib = {n: np.sort(rng.normal(size=5000)) for n in names}
    fresh = {
        n: rng.normal(size=100_000) for n in names
    }  # independent scores: worst case for a union
    limits = cal.thresholds(calib, 0.03, names)
    union = np.zeros(100_000, bool)
    for n in names:
        union |= fresh[n] > limits[n]
    assert cal.split_budget(0.03, names) == {"a": 0.01, "b": 0.01, "c": 0.01}
    assert float(union.mean()) <= 0.03 + 0.003
    naive = {n: cal.threshold(calib[n], 0.03) for n in names}
    assert float(np.any([fresh[n] > naive[n] for n in names], axis=0).mean()) > 0.08


def test_scores_outside_the_verdict_use_the_full_target() -> None:
    calib = {"a": np.arange(1.0, 200.0), "b": np.arange(1.0, 200.0)}
    limits = cal.thresholds(calib, 0.02, ["a"])
    assert limits["a"] == limits["b"] == cal.threshold(calib["a"], 0.02)


def test_unsupported_targets_are_refused() -> None:
    sorted_cal = np.arange(10.0)
    with pytest.raises(cal.CalibrationError, match="below"):
        cal.check_fpr(0.05, n=10)
    cal.check_fpr(1 / 11, n=10)
    with pytest.raises(cal.CalibrationError, match="below"):
        cal.threshold(sorted_cal, 0.05)
    with pytest.raises(cal.CalibrationError):
        cal.check_fpr(1.5, n=10)
    with pytest.raises(cal.CalibrationError, match="finite"):
        cal.sorted_scores(np.array([1.0, np.nan]))
