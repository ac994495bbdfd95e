"""Convolutional autoencoders: AE, VAE and β-VAE for any C×H×W input. Pure nn.Modules, no I/O."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Kind = Literal["ae", "vae", "beta-vae"]


@dataclass(frozen=True)
class ModelConfig:
    kind: Kind = "vae"
    channels: int = 1
    height: int = 28
    width: int = 28
    latent_dim: int = 16
    base_width: int = 8
    beta: float = 1.0

    @property
    def variational(self) -> bool:
        return self.kind != "ae"

    def levels(self) -> int:
        """Stride-2 stages: halve until the feature map is about 8 pixels or smaller."""
        size, levels = min(self.height, self.width), 0
        while size > 8 and levels < 4:
            size, levels = (size + 1) // 2, levels + 1
        return max(levels, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # kernel 3, padding 1: a stride-2 stage maps n to ceil(n / 2) for odd and even n alike.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=1), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = [min(cfg.base_width * 2**i, 256) for i in range(cfg.levels() + 1)]
        layers: list[nn.Module] = [_block(cfg.channels, widths[0], 1)]
        for c_in, c_out in itertools.pairwise(widths):
            layers.append(_block(c_in, c_out, 2))
        self.features = nn.Sequential(*layers)
        self.grid = (_shrink(cfg.height, cfg.levels()), _shrink(cfg.width, cfg.levels()))
        self.width = widths[-1]
        out = 2 * cfg.latent_dim if cfg.variational else cfg.latent_dim
        self.head = nn.Linear(self.width * self.grid[0] * self.grid[1], out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, grid: tuple[int, int], width: int) -> None:
        super().__init__()
        self.grid, self.width, self.size = grid, width, (cfg.height, cfg.width)
        self.head = nn.Linear(cfg.latent_dim, width * grid[0] * grid[1])
        widths = [min(cfg.base_width * 2**i, 256) for i in range(cfg.levels() + 1)][::-1]
        layers: list[nn.Module] = [nn.LeakyReLU(0.2)]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, padding=1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], cfg.channels, 3, 1, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Logits of the reconstruction, cropped to the input size."""
        h = self.head(z).view(-1, self.width, self.grid[0], self.grid[1])
        return self.body(h)[:, :, : self.size[0], : self.size[1]]


def _shrink(size: int, levels: int) -> int:
    for _ in range(levels):
        size = (size + 1) // 2
    return size


@dataclass
class Output:
    logits: Tensor  # reconstruction before the sigmoid
    z: Tensor  # the latent decoded: sampled in training (VAE), μ at inference
    mu: Tensor
    logvar: Tensor | None

    @property
    def x_hat(self) -> Tensor:
        return torch.sigmoid(self.logits)


class AutoEncoder(nn.Module):
    """AE when cfg.kind == 'ae'; VAE (β = 1) or β-VAE otherwise."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, self.encoder.grid, self.encoder.width)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.encoder(x)
        if not self.cfg.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor, sample: bool = False) -> Output:
        mu, logvar = self.encode(x)
        z = mu
        if sample and logvar is not None:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterization
        return Output(logits=self.decoder(z), z=z, mu=mu, logvar=logvar)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per image, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def reconstruction_loss(out: Output, target: Tensor, loss: str) -> Tensor:
    """Per-image reconstruction loss, summed over pixels (the Gaussian / Bernoulli log-likelihood)."""
    if loss == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(out.logits, target, reduction="none")
    else:
        per_pixel = (out.x_hat - target).pow(2)
    return per_pixel.flatten(1).sum(dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
