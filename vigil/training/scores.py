"""Per-image anomaly scores as one torch module, so the exported graph computes them all.

Scores (higher = more anomalous):
- reconstruction: mean squared error between the image and its reconstruction;
- blurred: mean squared error after a small Gaussian blur (5x5, sigma 1) of the error
  image, so that pixel-level texture the decoder cannot reproduce counts less than
  errors in shape;
- ssim: 1 - mean structural similarity (SSIM), a structural rather than pixel error;
- kl: KL(q(z|x) ‖ N(0, I)) summed over latent dimensions (VAE only);
- mahalanobis: squared Mahalanobis distance of the latent code (μ) under a Gaussian
  fitted to the training images' codes, divided by the latent dimension;
- knn: mean Euclidean distance of the latent code to its 5 nearest training codes, each
  latent dimension scaled by its standard deviation over the training codes;
- local: the maximum over the image of the local anomaly map (`vigil.training.local`):
  per-pixel features (local means, texture and gradient energies, reconstruction error,
  the fine structure of a 5x5 neighbourhood) under Gaussians of normal pixels, smoothed;
  a small defect or one that removes detail stands out here, not in an image-wide mean;
- combined: the mean of the log-scores of blurred, ssim, mahalanobis and knn, each
  standardised by its mean and standard deviation on the validation split. It is the
  primary score (see README).
- overall: the larger of `combined` and `local`, each standardised by its mean and
  standard deviation over the validation images: global (other object) and local
  (small defect) evidence, whichever is stronger.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vigil.training.models import AutoEncoder, kl_divergence

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
LOG_EPS = 1e-6
BLUR_WINDOW = 5
BLUR_SIGMA = 1.0
KNN_K = 5
KNN_BANK = 4096  # at most this many training codes are kept for knn (4096 x latent_dim floats)
COMBINED = ("blurred", "ssim", "mahalanobis", "knn")
ROW_FLOATS = 16  # a whole number of SIMD packets for every CPU build (SSE 4 ... AVX-512 16)


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """A normalised 1-D Gaussian of odd length `size`."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


class GaussianBlur(nn.Module):
    """A per-channel Gaussian blur with reflected borders, output the size of its input.

    The 2-D Gaussian is separable, so it runs as a 1 x k then a k x 1 depthwise
    convolution: 2k instead of k^2 multiply-adds per pixel. Together with blurring all
    SSIM statistics in one call, that made the exported graph ~25% cheaper on CPU.
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
    extra = -flat.shape[1] % ROW_FLOATS
    return F.pad(flat, [0, extra], value=fill) if extra else flat


def row_sum(t: Tensor) -> Tensor:
    """The sum of each image's values [N], independent of the batch (see `packed_rows`)."""
    return packed_rows(t).sum(1)


def row_mean(t: Tensor) -> Tensor:
    return row_sum(t) / t[0].numel()


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


class ScoreGraph(nn.Module):
    """images [N, C, H, W] in [0, 1] -> every score [N], the error map and the reconstruction."""

    latent_mean: Tensor
    latent_precision: Tensor
    knn_scale: Tensor
    knn_bank: Tensor
    knn_bank_sq: Tensor
    log_mean: Tensor
    log_std: Tensor
    overall_mean: Tensor
    overall_std: Tensor

    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model
        cfg = model.cfg
        self.variational = cfg.variational
        h, w = cfg.height, cfg.width
        self.ssim_blur = GaussianBlur(odd_window(SSIM_WINDOW, h, w), SSIM_SIGMA, 5 * cfg.channels)
        self.error_blur = GaussianBlur(odd_window(BLUR_WINDOW, h, w), BLUR_SIGMA, cfg.channels)
        d = cfg.latent_dim
        self.register_buffer("knn_scale", torch.ones(d))
        self.register_buffer("knn_bank", torch.zeros(KNN_K, d))  # replaced by fit_latent_density
        self.register_buffer("knn_bank_sq", torch.zeros(KNN_K))
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_precision", torch.eye(d))
        from vigil.training.local import LocalMaps  # local.py builds on this module

        self.local = LocalMaps(cfg.channels, h, w)
        self.register_buffer("log_mean", torch.zeros(len(COMBINED)))
        self.register_buffer("log_std", torch.ones(len(COMBINED)))
        self.register_buffer("overall_mean", torch.zeros(2))
        self.register_buffer("overall_std", torch.ones(2))

    def base_scores(self) -> list[str]:
        names = ["reconstruction", "blurred", "ssim", "mahalanobis", "knn", "local"]
        return [*names, "kl"] if self.variational else names

    def score_names(self) -> list[str]:
        return [*self.base_scores(), "combined", "overall"]

    def raw_scores(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]:
        """Scores before `combined`, the error map, x_hat, the code and the anomaly map."""
        mu, logvar = self.model.encode(x)
        x_hat = self.model.decode(mu)
        sq = (x - x_hat).pow(2)
        centred = mu - self.latent_mean
        scores = {
            "reconstruction": row_mean(sq),
            "blurred": row_mean(self.error_blur(x - x_hat).pow(2)),
            "ssim": 1.0 - row_mean(ssim_map(x, x_hat, self.ssim_blur)),
            "mahalanobis": row_mean(centred @ self.latent_precision * centred),
            "knn": self.knn_distance(mu),
        }
        maps = self.local(x, x_hat)
        anomaly_map = torch.maximum(torch.maximum(maps[:, :1], maps[:, 1:2]), maps[:, 2:3])
        scores["local"] = anomaly_map.flatten(1).amax(1)  # a max is exact in any order
        if logvar is not None:
            # kl_divergence on zero-padded rows: a padded (0, 0) adds exactly 0
            scores["kl"] = kl_divergence(packed_rows(mu), packed_rows(logvar))
        return scores, sq.mean(1, keepdim=True), x_hat, mu, anomaly_map

    def knn_distance(self, mu: Tensor) -> Tensor:
        """Mean distance to the KNN_K nearest training codes (matmul + TopK: exportable)."""
        q = mu / self.knn_scale
        d2 = row_sum(q * q)[:, None] - 2.0 * q @ self.knn_bank.T + self.knn_bank_sq
        k = min(KNN_K, int(self.knn_bank.shape[0]))  # a Python int: a constant in the graph
        nearest = torch.topk(d2, k, dim=1, largest=False).values
        return row_mean(nearest.clamp_min(0.0).sqrt())

    def log_scores(self, scores: dict[str, Tensor]) -> Tensor:
        """[N, len(COMBINED)] logs of the combined scores, in whole-packet rows."""
        stacked = packed_rows(torch.stack([scores[n] for n in COMBINED], dim=1), fill=1.0)
        return torch.log(stacked + LOG_EPS)[:, : len(COMBINED)]

    def combine(self, scores: dict[str, Tensor]) -> Tensor:
        return row_mean((self.log_scores(scores) - self.log_mean) / self.log_std)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        scores, error_map, x_hat, mu, anomaly_map = self.raw_scores(x)
        scores["combined"] = self.combine(scores)
        scores["overall"] = self.overall(scores)
        return {
            **scores,
            "error_map": error_map,
            "x_hat": x_hat,
            "latent": mu,
            "anomaly_map": anomaly_map,
        }

    @torch.no_grad()
    def fit_latent_density(self, mu: Tensor) -> None:
        """Fit the Gaussian of the training codes (shrunk covariance, so it inverts safely)."""
        mean = mu.mean(0)
        cov = torch.cov((mu - mean).T.double()).reshape(mu.shape[1], mu.shape[1])
        shrink = 1e-3 * torch.trace(cov) / cov.shape[0] + 1e-8
        cov = cov + shrink * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.latent_mean.copy_(mean)
        self.latent_precision.copy_(torch.linalg.inv(cov).float())
        # knn bank: the (scaled) training codes, a fixed random subset when there are many
        scale = mu.std(0).clamp_min(1e-6) if len(mu) > 1 else torch.ones_like(mean)
        if len(mu) > KNN_BANK:
            keep = torch.randperm(len(mu), generator=torch.Generator().manual_seed(0))
            mu = mu[keep[:KNN_BANK].to(mu.device)]
        bank = (mu / scale).float()
        self.knn_scale = scale.float()
        self.knn_bank = bank
        self.knn_bank_sq = (bank * bank).sum(1)

    @torch.no_grad()
    def fit_local(self, train: Tensor, val: Tensor, batch: int = 256) -> None:
        """The local maps' Gaussians on training images, their standardisation on validation."""

        def pairs(images: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
            device = next(self.parameters()).device
            for b in images.split(batch):
                b = b.to(device)
                yield b, self.model.decode(self.model.encode(b)[0])

        self.local.fit_gaussians(lambda: pairs(train))
        self.local.fit_standardisation(torch.cat([self.local.distances(*p) for p in pairs(val)]))

    @torch.no_grad()
    def fit_standardisation(self, scores: dict[str, Tensor]) -> None:
        logs = self.log_scores(scores)
        self.log_mean.copy_(logs.mean(0))
        self.log_std.copy_(logs.std(0).clamp_min(1e-6))
        both = torch.stack([self.combine(scores), scores["local"]], dim=1)
        self.overall_mean.copy_(both.mean(0))
        self.overall_std.copy_(both.std(0).clamp_min(1e-6))

    def overall(self, scores: dict[str, Tensor]) -> Tensor:
        """max of `combined` and `local`, each standardised on the validation images."""
        z = (torch.stack([scores["combined"], scores["local"]], dim=1) - self.overall_mean) / (
            self.overall_std
        )
        return torch.maximum(z[:, 0], z[:, 1])  # a max is exact: batch-invariant
