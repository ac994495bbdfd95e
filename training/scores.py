"""Per-image anomaly scores as one torch module, so the exported graph computes them all.

Scores (higher = more anomalous):
- reconstruction: mean squared error between the image and its reconstruction;
- ssim: 1 - mean structural similarity (SSIM), a structural rather than pixel error;
- kl: KL(q(z|x) ‖ N(0, I)) summed over latent dimensions (VAE only);
- mahalanobis: squared Mahalanobis distance of the latent code (μ) under a Gaussian
  fitted to the training images' codes, divided by the latent dimension;
- combined: the mean of the log-scores above, each standardised by its mean and
  standard deviation on the validation split. It is the primary score (see README).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from training.models import AutoEncoder, kl_divergence

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
LOG_EPS = 1e-6


def gaussian_window(size: int, sigma: float, channels: int) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(x: Tensor, y: Tensor, window: Tensor) -> Tensor:
    """SSIM per pixel for images in [0, 1] (Wang et al. 2004, Gaussian window)."""
    c1, c2 = 0.01**2, 0.03**2
    channels, pad = x.shape[1], window.shape[-1] // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, [pad] * 4, mode="reflect"), window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


class ScoreGraph(nn.Module):
    """images [N, C, H, W] in [0, 1] -> every score [N], the error map and the reconstruction."""

    window: Tensor
    latent_mean: Tensor
    latent_precision: Tensor
    log_mean: Tensor
    log_std: Tensor

    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model
        cfg = model.cfg
        self.variational = cfg.variational
        size = min(SSIM_WINDOW, cfg.height, cfg.width)
        size -= 1 - size % 2  # odd window
        self.register_buffer("window", gaussian_window(size, SSIM_SIGMA, cfg.channels))
        d = cfg.latent_dim
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_precision", torch.eye(d))
        names = self.base_scores()
        self.register_buffer("log_mean", torch.zeros(len(names)))
        self.register_buffer("log_std", torch.ones(len(names)))

    def base_scores(self) -> list[str]:
        names = ["reconstruction", "ssim", "mahalanobis"]
        return [*names, "kl"] if self.variational else names

    def score_names(self) -> list[str]:
        return [*self.base_scores(), "combined"]

    def raw_scores(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        mu, logvar = self.model.encode(x)
        x_hat = self.model.decode(mu)
        sq = (x - x_hat).pow(2)
        window = self.window.to(x.dtype)
        centred = mu - self.latent_mean
        scores = {
            "reconstruction": sq.flatten(1).mean(1),
            "ssim": 1.0 - ssim_map(x, x_hat, window).flatten(1).mean(1),
            "mahalanobis": (centred @ self.latent_precision * centred).sum(1) / mu.shape[1],
        }
        if logvar is not None:
            scores["kl"] = kl_divergence(mu, logvar)
        return scores, sq.mean(1, keepdim=True), x_hat, mu

    def combine(self, scores: dict[str, Tensor]) -> Tensor:
        logs = torch.stack([torch.log(scores[n] + LOG_EPS) for n in self.base_scores()], dim=1)
        return ((logs - self.log_mean) / self.log_std).mean(1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        scores, error_map, x_hat, mu = self.raw_scores(x)
        scores["combined"] = self.combine(scores)
        return {**scores, "error_map": error_map, "x_hat": x_hat, "latent": mu}

    @torch.no_grad()
    def fit_latent_density(self, mu: Tensor) -> None:
        """Fit the Gaussian of the training codes (shrunk covariance, so it inverts safely)."""
        mean = mu.mean(0)
        cov = torch.cov((mu - mean).T.double()).reshape(mu.shape[1], mu.shape[1])
        shrink = 1e-3 * torch.trace(cov) / cov.shape[0] + 1e-8
        cov = cov + shrink * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.latent_mean.copy_(mean)
        self.latent_precision.copy_(torch.linalg.inv(cov).float())

    @torch.no_grad()
    def fit_standardisation(self, scores: dict[str, Tensor]) -> None:
        logs = torch.stack([torch.log(scores[n] + LOG_EPS) for n in self.base_scores()], dim=1)
        self.log_mean.copy_(logs.mean(0))
        self.log_std.copy_(logs.std(0).clamp_min(1e-6))
