"""The texture benchmark's defects (benchmarks/texture_data.py) on made-up images: no photo
needed, so this runs without scikit-image."""

from __future__ import annotations

import numpy as np

from benchmarks.texture_data import AMPLITUDES, KINDS, SIZES, Strength, add_defect


def _half_flat(rng: np.random.Generator) -> np.ndarray:
    """Left half one grey level, right half noise: smoothing or emptying the left half
    changes nothing, so a defect drawn there is no defect."""
    x = np.full((64, 64), 0.5, np.float32)
    x[:, 32:] = rng.uniform(0.2, 0.8, (64, 32))
    return x


def test_visible_defects_change_their_pixels_by_at_least_the_floor() -> None:
    rng = np.random.default_rng(0)
    x = _half_flat(rng)
    strength = Strength(AMPLITUDES["visible"], float(x.std()))
    least = AMPLITUDES["visible"].least_change * strength.sigma
    for kind in KINDS:
        for extent in SIZES.values():
            for _ in range(10):
                out, mask = add_defect(x, kind, extent, rng, strength)
                assert mask.any() and out.dtype == np.float32
                assert np.sqrt(np.mean((out[mask] - x[mask]) ** 2)) >= least, (kind, extent)


def test_faint_defects_are_not_redrawn() -> None:
    """`faint` keeps the first draw, visible or not (round 1 of the benchmark, as it was)."""
    x = _half_flat(np.random.default_rng(0))
    strength = Strength(AMPLITUDES["faint"], float(x.std()))
    unchanged = 0
    for seed in range(20):
        out, mask = add_defect(x, "smoothed", SIZES["small"], np.random.default_rng(seed), strength)
        unchanged += int(np.allclose(out[mask], x[mask], atol=1e-6))
    assert unchanged > 0  # some patches landed on the flat half and were kept
