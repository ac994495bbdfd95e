"""The `spectrum` score: the camera check, how the image's detail, noise, levels and
compression compare with normal images'.

A defocused or shaken camera, a washed-out exposure, a noisy sensor or a starved
encoder changes every part of the frame at once, and mostly by *removing* detail, which
an autoencoder reconstructs better, not worse: blur scored below chance on the
reconstruction-based scores (README, "Acquisition faults"). This score looks at the
image itself: nine numbers per image, scored by their squared Mahalanobis distance to a
Gaussian of the training images' (two-sided, so lost and added detail are both far from
normal):

- five log energies: three band-passes (x - blur1, blur1 - blur2, blur2 - blur4), the
  squared 1-px gradients, and the variance of the coarse image (its contrast);
- the noise floor: the log fine-band energy (blurred over 1 px) of the image's least
  detailed twentieth. Noise hides among edges in the whole-image energies but fills the
  flat regions, which are otherwise empty (floored at 2.5 grey levels RMS, below which an
  8-bit flat region is only quantisation);
- the black and white levels: the mean of the darkest and of the brightest hundredth of
  the pixels (lost contrast and exposure move them even where the detail energies do not);
- blockiness: the log ratio of the squared steps across 8-px block boundaries to those
  inside blocks (JPEG's and most video codecs' transform blocks; about 0 for clean
  images, positive for over-compressed ones).

Every step is a convolution, a TopK, a whole-packet row sum (`graph_ops`) or arithmetic
on an [N, 16] row, so the score is batch-invariant.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from vigil.training.gaussian import fit_gaussian
from vigil.training.graph_ops import GaussianBlur, odd_window, packed_rows, row_mean, row_sum

BANDS = (1.0, 2.0, 4.0)
FEATURES = 9
ENERGY_FLOOR = 1e-8  # a flat image's energies are 0: floored before the log
FLAT_SHARE = 0.05  # the least detailed twentieth of the image: where a noisy sensor shows
FLAT_FLOOR = (2.5 / 255) ** 2  # finer than this, an 8-bit flat region is quantisation
LEVEL_SHARE = 0.01  # the darkest and the brightest hundredth: black and white levels
BLOCK = 8  # JPEG's transform block
SCALE_FLOOR = 1e-3  # a feature that varies less in training is taken as varying this much


def block_edges(size: int) -> Tensor:
    """[size - 1] 1.0 where a 1-px step crosses a BLOCK boundary, else 0.0."""
    return ((torch.arange(1, size) % BLOCK) == 0).float()


class Spectrum(nn.Module):
    """images [N, C, H, W] in [0, 1] -> `spectrum` [N] (after `fit`)."""

    mean: Tensor
    precision: Tensor
    across_cols: Tensor
    across_rows: Tensor

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.blurs = nn.ModuleList(
            GaussianBlur(odd_window(int(4 * s + 1), height, width), s, channels) for s in BANDS
        )
        pixels = channels * height * width
        self.flat_k = max(1, round(FLAT_SHARE * pixels))
        self.level_k = max(1, round(LEVEL_SHARE * pixels))
        cols, rows = block_edges(width), block_edges(height)
        self.register_buffer("across_cols", cols.view(1, 1, 1, -1))
        self.register_buffer("across_rows", rows.view(1, 1, -1, 1))
        # 1-px steps per channel across block boundaries and inside blocks: fixed by the
        # input's size, so constants in the graph
        self.channels = channels
        self.n_across = float(cols.sum()) * height + float(rows.sum()) * width
        self.n_inside = height * (width - 1) + (height - 1) * width - self.n_across
        self.register_buffer("mean", torch.zeros(FEATURES))
        self.register_buffer("precision", torch.eye(FEATURES))

    def features(self, x: Tensor) -> Tensor:
        """[N, FEATURES]: the module docstring's nine numbers."""
        b1, b2, b4 = (blur(x) for blur in self.blurs)
        # centred before squaring: E[b^2] - E[b]^2 cancels to noise on a flat image
        coarse = b4 - row_mean(b4).view(-1, 1, 1, 1)
        fine = (x - b1).pow(2)
        steps_x = (x[..., 1:] - x[..., :-1]).pow(2)
        steps_y = (x[..., 1:, :] - x[..., :-1, :]).pow(2)
        energies = [
            row_mean(fine),
            row_mean((b1 - b2).pow(2)),
            row_mean((b2 - b4).pow(2)),
            row_mean(steps_x) + row_mean(steps_y),
            row_mean(coarse * coarse),
            self._lowest(self.blurs[0](fine), self.flat_k).clamp_min(FLAT_FLOOR),
            self._blockiness(steps_x, steps_y),
        ]
        stacked = packed_rows(torch.stack(energies, 1).clamp_min(ENERGY_FLOOR), fill=1.0)
        logs = torch.log(stacked)[:, : len(energies)]  # whole-packet rows: see graph_ops
        black = self._lowest(x, self.level_k)
        white = -self._lowest(-x, self.level_k)
        return torch.cat([logs, black[:, None], white[:, None]], 1)

    @staticmethod
    def _lowest(t: Tensor, k: int) -> Tensor:
        """[N]: the mean of each image's k smallest values (TopK: exact in any batch)."""
        return row_mean(torch.topk(t.flatten(1), k, dim=1, largest=False).values)

    def _blockiness(self, steps_x: Tensor, steps_y: Tensor) -> Tensor:
        """[N]: mean squared step across block boundaries / inside blocks (1 if none)."""
        if self.n_across == 0:  # smaller than a block: no boundary to look at
            return torch.ones(steps_x.shape[0], dtype=steps_x.dtype, device=steps_x.device)
        across_x, across_y = self.across_cols, self.across_rows
        across = row_sum(steps_x * across_x) + row_sum(steps_y * across_y)
        inside = row_sum(steps_x * (1 - across_x)) + row_sum(steps_y * (1 - across_y))
        eps, channels = ENERGY_FLOOR, self.channels
        return (across / (channels * self.n_across) + eps) / (
            inside / (channels * self.n_inside) + eps
        )

    def forward(self, x: Tensor) -> Tensor:
        centred = self.features(x) - self.mean
        return row_mean(centred @ self.precision * centred)

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor]) -> None:
        """The Gaussian of the training images' features (`training.gaussian`)."""
        f = torch.cat([self.features(b) for b in batches]).double()
        if len(f) < 2:
            return  # no spread to measure: the identity Gaussian stays
        # in units of each feature's spread: the shrinkage is relative to the mean
        # variance, and levels vary far less than log energies do
        scale = f.std(0).clamp_min(SCALE_FLOOR)
        mean, precision = fit_gaussian(f / scale)
        self.mean.copy_((mean * scale).float())
        self.precision.copy_((precision / scale[:, None] / scale[None, :]).float())
