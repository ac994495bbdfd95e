"""The `spectrum` score: how much detail and contrast the image has, against normal images.

A defocused or shaken camera, a washed-out exposure or a noisy sensor changes every part
of the frame at once, and mostly by *removing* detail, which an autoencoder reconstructs
better, not worse: blur scored below chance on the reconstruction-based scores (README,
"Acquisition faults"). This score looks at the image's detail directly: five log
energies per image (three band-passes x - blur1, blur1 - blur2, blur2 - blur4; the
squared 1-px gradients; the variance of the coarse image, i.e. its contrast), scored by
their squared Mahalanobis distance to a Gaussian of the training images' energies. It is
two-sided: lost detail (blur, low contrast) and added detail (noise, blocking) are both
far from normal.

Every step is a convolution, a whole-packet row mean (`graph_ops`) or arithmetic on an
[N, 16] row, so the score is batch-invariant.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from vigil.training.gaussian import fit_gaussian
from vigil.training.graph_ops import GaussianBlur, odd_window, packed_rows, row_mean

BANDS = (1.0, 2.0, 4.0)
FEATURES = 5
ENERGY_FLOOR = 1e-8  # a flat image's energies are 0: floored before the log


class Spectrum(nn.Module):
    """images [N, C, H, W] in [0, 1] -> `spectrum` [N] (after `fit`)."""

    mean: Tensor
    precision: Tensor

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.blurs = nn.ModuleList(
            GaussianBlur(odd_window(int(4 * s + 1), height, width), s, channels) for s in BANDS
        )
        self.register_buffer("mean", torch.zeros(FEATURES))
        self.register_buffer("precision", torch.eye(FEATURES))

    def features(self, x: Tensor) -> Tensor:
        """[N, FEATURES] log energies."""
        b1, b2, b4 = (blur(x) for blur in self.blurs)
        # centred before squaring: E[b^2] - E[b]^2 cancels to noise on a flat image
        coarse = b4 - row_mean(b4).view(-1, 1, 1, 1)
        energies = [
            row_mean((x - b1).pow(2)),
            row_mean((b1 - b2).pow(2)),
            row_mean((b2 - b4).pow(2)),
            row_mean((x[..., 1:] - x[..., :-1]).pow(2))
            + row_mean((x[..., 1:, :] - x[..., :-1, :]).pow(2)),
            row_mean(coarse * coarse),
        ]
        stacked = packed_rows(torch.stack(energies, 1).clamp_min(ENERGY_FLOOR), fill=1.0)
        return torch.log(stacked)[:, :FEATURES]  # whole-packet rows: see graph_ops

    def forward(self, x: Tensor) -> Tensor:
        centred = self.features(x) - self.mean
        return row_mean(centred @ self.precision * centred)

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor]) -> None:
        """The Gaussian of the training images' features (`training.gaussian`)."""
        f = torch.cat([self.features(b) for b in batches]).double()
        if len(f) < 2:
            return  # no spread to measure: the identity Gaussian stays
        mean, precision = fit_gaussian(f)
        self.mean.copy_(mean.float())
        self.precision.copy_(precision.float())
