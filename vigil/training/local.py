"""Local anomaly maps for the score graph: per-pixel features under Gaussians of normal pixels.

Every score before these was an image-wide mean, so a defect of a few pixels was
averaged away, and a defect that removes detail (a smoothed or missing patch) even
reconstructs *better* than normal texture. These maps look at each pixel's
neighbourhood instead, and the `local` score is the maximum of the smoothed map (the
field's practice, e.g. anomalib's).

Two feature sets per pixel, each scored by the squared Mahalanobis distance to a
Gaussian fitted in closed form on the training images' pixels (mean per pixel location,
so centred objects such as Fashion-MNIST's keep their layout; one covariance shared by
all locations):

- `stats` (what the image looks like around the pixel, 11 + 3C features): local means per
  channel at three scales (Gaussian sigma 1, 2, 4); the (compressed) energy of three band-passes
  (x - blur1, blur1 - blur2, blur2 - blur4): texture energy, so missing or smoothed detail
  is *low* energy and far from normal; the energy of four oriented gradients
  (horizontal, vertical, both diagonals); the high-pass value; and the
  reconstruction error blurred at two scales;
- `patch` (the fine structure): the 5x5 neighbourhood of the band-pass x - blur2, so a thin
  line, a crack or a scratch, unlikely under the texture's own covariance, stands out;
- `detail` (missing detail, one-sided): the sum of squared *deficits* of the seven texture
  and gradient energies below their normal mean, each in units of its normal standard
  deviation. A Gaussian's distance barely notices a few dimensions falling towards zero
  among many; this map sees nothing else.

Energies and distances are compressed by a fourth root (log-like; see `compress`).
Each map is compress(blur2(distance)), standardised by its mean and standard deviation over
the validation images' pixels; `anomaly_map` is the pixel-wise maximum of the three and
`local` its maximum over the image. All of it is convolutions, elementwise arithmetic,
and square roots, so it is batch-invariant (no Log: see `compress`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vigil.training.gaussian import shrunk
from vigil.training.graph_ops import GaussianBlur, odd_window

LOG_FLOOR = 1e-4  # energies are floored here before the log: 8-bit flat regions are ~0
MAP_FLOOR = 1e-6
PATCH = 5
BANDS = (1.0, 2.0, 4.0)
MAP_SIGMA = 2.0
MAPS = 3  # stats, patch, detail
ENERGIES = 7  # band and gradient energies: the `detail` map's features


def compress(t: Tensor) -> Tensor:
    """t ** (1/4) as two square roots: a log-like compression of energies and distances.

    Not a Log: ONNX Runtime splits a large elementwise Log between threads in blocks whose
    boundaries depend on the batch, and its scalar tail rounds differently, so a log of a
    whole map is not batch-invariant (measured; padding rows to 16 or 64 floats did not fix
    it). A square root is correctly rounded on every path, so this is.
    """
    return torch.sqrt(torch.sqrt(t))


def _blur(sigma: float, channels: int, height: int, width: int) -> GaussianBlur:
    return GaussianBlur(odd_window(int(2 * round(2 * sigma) + 1), height, width), sigma, channels)


def stats_features(channels: int) -> int:
    return 3 * channels + 3 + 4 + 1 + 2


class LocalMaps(nn.Module):
    """(x, x_hat) [N, C, H, W] -> standardised local maps `stats`, `patch` [N, 1, H, W]."""

    stats_mean: Tensor
    stats_whiten: Tensor
    patch_mean: Tensor
    patch_whiten: Tensor
    patch_filters: Tensor
    grad_filters: Tensor
    to_gray: Tensor
    ones_stats: Tensor
    ones_patch: Tensor
    detail_scale: Tensor
    ones_detail: Tensor
    map_mean: Tensor
    map_std: Tensor

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.channels = channels
        self.blurs = nn.ModuleList([_blur(s, channels, height, width) for s in BANDS])
        self.gray_blurs = nn.ModuleList([_blur(s, 1, height, width) for s in BANDS])
        self.energy_blurs = nn.ModuleList([_blur(s, 1, height, width) for s in (1.5, 2.0, 3.0)])
        self.grad_blur = _blur(1.0, 4, height, width)
        self.error_blurs = nn.ModuleList([_blur(s, 1, height, width) for s in (1.0, 2.0)])
        self.map_blur = _blur(MAP_SIGMA, MAPS, height, width)
        self.patch = min(PATCH, odd_window(PATCH, height, width))
        k = self.patch
        # the k x k neighbourhood as k*k channels: one-hot convolution filters
        self.register_buffer("patch_filters", torch.eye(k * k).view(k * k, 1, k, k))
        # 2x2 differences for the four oriented gradients
        grads = torch.zeros(4, 1, 2, 2)
        grads[0, 0, 0, 0], grads[0, 0, 0, 1] = -1.0, 1.0  # horizontal
        grads[1, 0, 0, 0], grads[1, 0, 1, 0] = -1.0, 1.0  # vertical
        grads[2, 0, 0, 0], grads[2, 0, 1, 1] = -1.0, 1.0  # diagonal
        grads[3, 0, 0, 1], grads[3, 0, 1, 0] = -1.0, 1.0  # anti-diagonal
        self.register_buffer("grad_filters", grads)
        fs, fp = stats_features(channels), k * k
        self.register_buffer("stats_mean", torch.zeros(fs, height, width))
        self.register_buffer("stats_whiten", torch.eye(fs).view(fs, fs, 1, 1))
        self.register_buffer("patch_mean", torch.zeros(fp, height, width))
        self.register_buffer("patch_whiten", torch.eye(fp).view(fp, fp, 1, 1))
        self.register_buffer("map_mean", torch.zeros(1, MAPS, 1, 1))
        self.register_buffer("map_std", torch.ones(1, MAPS, 1, 1))
        self.register_buffer("detail_scale", torch.ones(1, ENERGIES, 1, 1))
        self.register_buffer("ones_detail", torch.ones(1, ENERGIES, 1, 1))
        # channel means as 1x1 convolutions (batch-invariant, unlike a ReduceMean over C)
        self.register_buffer("to_gray", torch.full((1, channels, 1, 1), 1.0 / channels))
        self.register_buffer("ones_stats", torch.ones(1, fs, 1, 1))
        self.register_buffer("ones_patch", torch.ones(1, fp, 1, 1))

    def features(self, x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
        gray = F.conv2d(x, self.to_gray) if self.channels > 1 else x
        means = [blur(x) for blur in self.blurs]
        g1, g2, g4 = (blur(gray) for blur in self.gray_blurs)
        bands = torch.cat([gray - g1, g1 - g2, g2 - g4], 1)
        sq = bands * bands
        energies = torch.cat(
            [blur(sq[:, i : i + 1]) for i, blur in enumerate(self.energy_blurs)], 1
        )
        padded = F.pad(gray, [0, 1, 0, 1], mode="replicate")
        grads = F.conv2d(padded, self.grad_filters)
        grad_energy = self.grad_blur(grads * grads)
        err = (x - x_hat).pow(2)
        err = F.conv2d(err, self.to_gray) if self.channels > 1 else err
        errors = torch.cat([blur(err) for blur in self.error_blurs], 1)
        logs = compress(torch.cat([energies, grad_energy, errors], 1) + LOG_FLOOR)
        stats = torch.cat([*means, logs[:, :7], bands[:, :1], logs[:, 7:]], 1)
        hp = gray - g2
        pad = self.patch // 2
        patch = F.conv2d(F.pad(hp, [pad] * 4, mode="reflect"), self.patch_filters)
        return stats, patch

    def distances(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """[N, 3, H, W]: compressed blurred distances (stats, patch, detail)."""
        stats, patch = self.features(x, x_hat)
        centred = stats - self.stats_mean
        ws = F.conv2d(centred, self.stats_whiten)
        wp = F.conv2d(patch - self.patch_mean, self.patch_whiten)
        first = 3 * self.channels  # the energies follow the local means
        deficit = F.relu(-centred[:, first : first + ENERGIES] * self.detail_scale)
        # sums over channels as 1x1 convolutions: batch-invariant, like the rest
        d = torch.cat(
            [
                F.conv2d(ws * ws, self.ones_stats),
                F.conv2d(wp * wp, self.ones_patch),
                F.conv2d(deficit * deficit, self.ones_detail),
            ],
            1,
        )
        return compress(self.map_blur(d) + MAP_FLOOR)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """[N, 3, H, W] standardised maps (stats, patch, detail)."""
        return (self.distances(x, x_hat) - self.map_mean) / self.map_std

    # -- fitting (closed form) -------------------------------------------------------------

    @torch.no_grad()
    def fit_gaussians(self, batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]) -> None:
        """Per-location means and shared covariances from training images' (x, x_hat).

        `batches()` yields the batches afresh: two passes (means, then covariances), so
        the features of all images are never held at once.
        """
        buffers = ((self.stats_mean, self.stats_whiten), (self.patch_mean, self.patch_whiten))
        sums: list[Tensor] = [torch.zeros(b[0].shape, dtype=torch.float64) for b in buffers]
        count = 0
        for x, xh in batches():
            for total, f in zip(sums, self.features(x, xh), strict=True):
                total += f.double().sum(0).cpu()
            count += len(x)
        means = [total / max(count, 1) for total in sums]
        covs = [torch.zeros(m.shape[0], m.shape[0], dtype=torch.float64) for m in means]
        pixels = 0
        for x, xh in batches():
            for cov, mean, f in zip(covs, means, self.features(x, xh), strict=True):
                c = (f.double().cpu() - mean).permute(0, 2, 3, 1).reshape(-1, mean.shape[0])
                cov += c.T @ c
            pixels += len(x) * x.shape[2] * x.shape[3]
        for (mean_buf, whiten_buf), mean, cov in zip(buffers, means, covs, strict=True):
            dim = mean.shape[0]
            cov /= max(pixels - 1, 1)
            cov = shrunk(cov, floor=1e-10)
            # P = L L^T; w = L^T (f - mean) has |w|^2 = (f - mean)^T P (f - mean)
            chol = torch.linalg.cholesky(torch.linalg.inv(cov))
            mean_buf.copy_(mean.float())
            whiten_buf.copy_(chol.T.float().view(dim, dim, 1, 1))
            if mean_buf is self.stats_mean:
                first = 3 * self.channels
                std = cov.diagonal()[first : first + ENERGIES].sqrt().clamp_min(1e-6)
                self.detail_scale.copy_((1.0 / std).float().view(1, ENERGIES, 1, 1))

    @torch.no_grad()
    def fit_standardisation(self, distances: Tensor) -> None:
        """Mean and std of each map over validation pixels ([N, 3, H, W] from `distances`)."""
        self.map_mean.copy_(distances.mean((0, 2, 3)).view(1, MAPS, 1, 1))
        self.map_std.copy_(distances.std((0, 2, 3)).clamp_min(1e-6).view(1, MAPS, 1, 1))
