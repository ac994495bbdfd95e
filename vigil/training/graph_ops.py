"""The tensor operations the exported score graph is built from, each batch-invariant.

ONNX Runtime's CPU kernels run reductions and transcendental functions in SIMD packets
and a buffer's remainder in scalar code that rounds differently; `packed_rows` lays each
image's values out in whole packets so that a score gets the same bits alone or batched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SSIM_WINDOW = 7


SSIM_SIGMA = 1.5


BLUR_WINDOW = 5


BLUR_SIGMA = 1.0


ROW_FLOATS = 16  # a whole number of SIMD packets for every CPU build (SSE 4 ... AVX-512 16)


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """A normalised 1-D Gaussian of odd length `size`."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


class GaussianBlur(nn.Module):
    """A per-channel Gaussian blur with reflected borders, output the size of its input.

    The 2-D Gaussian is separable, so it runs as a 1 x k then a k x 1 depthwise
    convolution: 2k instead of k^2 multiply-adds per pixel.
    """

    rows: Tensor
    cols: Tensor

    def __init__(self, size: int, sigma: float, channels: int) -> None:
        super().__init__()
        g = gaussian_kernel(size, sigma)
        self.pad = size // 2
        self.register_buffer("rows", g.view(1, 1, 1, size).repeat(channels, 1, 1, 1))
        self.register_buffer("cols", g.view(1, 1, size, 1).repeat(channels, 1, 1, 1))

    def forward(self, t: Tensor) -> Tensor:
        groups = self.rows.shape[0]
        padded = F.pad(t, [self.pad] * 4, mode="reflect")
        return F.conv2d(F.conv2d(padded, self.rows, groups=groups), self.cols, groups=groups)


def packed_rows(t: Tensor, fill: float = 0.0) -> Tensor:
    """[N, ...] -> [N, M]: each image's values in a row, padded with `fill` to a multiple of 16.

    Why: ONNX Runtime's CPU kernels run reductions and transcendental functions (Log, Exp)
    in SIMD packets and a buffer's remainder in scalar code that rounds differently. When a
    row is not a whole number of packets, which of its values land in the remainder depends
    on its position in the batch, and the last bit of a score would depend on which other
    images shared its batch. Whole-packet rows get the same bits alone or batched (CPU
    provider; on CUDA, cuDNN's per-shape algorithm choice may still differ in the last bit).
    """
    flat = t.flatten(1)
    extra = -_static_size(t) % ROW_FLOATS
    return F.pad(flat, [0, extra], value=fill) if extra else flat


def row_sum(t: Tensor) -> Tensor:
    """The sum of each image's values [N], independent of the batch (see `packed_rows`)."""
    return packed_rows(t).sum(1)


def row_mean(t: Tensor) -> Tensor:
    return row_sum(t) / _static_size(t)


def _static_size(t: Tensor) -> int:
    """Values per image, as a Python int: the exporter then writes a constant, where
    `t[0].numel()` or `shape[1]` become Shape, Gather and Cast nodes run on every call (a
    third of the 28x28 graph's nodes; BENCHMARKS.md, `ort_cost`)."""
    return math.prod(int(s) for s in t.shape[1:])


def odd_window(size: int, height: int, width: int) -> int:
    """`size`, shrunk to fit the image and made odd."""
    size = min(size, height, width)
    return size - (1 - size % 2)


def ssim_map(x: Tensor, y: Tensor, blur5: GaussianBlur) -> Tensor:
    """SSIM per pixel for images in [0, 1] (Wang et al. 2004, Gaussian window).

    `blur5` blurs 5 x C channels: the five local statistics go through one call.
    """
    c1, c2 = 0.01**2, 0.03**2
    stats = blur5(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den
