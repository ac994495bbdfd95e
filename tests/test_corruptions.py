"""The corruption benchmark's occluder (benchmarks/corruptions.py) on made-up images."""

from __future__ import annotations

import numpy as np

from benchmarks.corruptions import OCCLUDER_HIDES, occlusion


def test_an_occluder_hides_part_of_the_object_not_only_background() -> None:
    """A small bright object on black: a black square over the background would leave the
    image as it was, so the square is drawn again until it hides some of the object."""
    x = np.zeros((28, 28), np.float32)
    x[18:26, 2:10] = 0.8  # an 8 x 8 object in a corner: most 7-px squares miss it
    for seed in range(20):
        out = occlusion(x, 0.25, np.random.default_rng(seed))
        hidden = (x > 0.1) & (out == 0.0)
        assert hidden.sum() >= OCCLUDER_HIDES * 7 * 7
