"""Per-image anomaly scores as one torch module, so the exported graph computes them all.

The names and descriptions are in `vigil.core.score_names`. Why these: pixel error alone
is a weak score; `blurred` counts errors of shape more than texture the decoder cannot
reproduce; `ssim` is structural; the latent scores (`mahalanobis`, `knn`, `kl`) catch
images that reconstruct well but are coded unlike normal ones; `combined` averages the
standardised log-scores of both views; `spectrum` (`training.spectrum`) compares the
image's detail and contrast with the normal images', for a defocused, shaken or noisy
camera; `local` (`training.local`) is the maximum of a per-pixel anomaly map, so a small
defect, or one that removes detail, is not averaged away; `defect` is the strongest
logit of a small segmentation net trained on synthetic defects (`training.head`), which
sees stains, shifts and missing detail on busy textures that the other maps take for
normal; `heatmap` is the maximum of the two maps added pixel by pixel, each standardised,
so a place both find unusual outranks a stray peak of either; `overall` takes whichever
of its parts is strongest, each standardised on the validation images: which parts is
`score_names.overall_parts` (README, "Detection quality").
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from vigil.core.bundle import (
    ANOMALY_MAP_OUTPUT,
    ERROR_MAP_OUTPUT,
    LATENT_OUTPUT,
    RECONSTRUCTION_IMAGE_OUTPUT,
)
from vigil.core.score_names import (
    COMBINED,
    COMBINED_FROM,
    DEFECT,
    HEATMAP,
    LOCAL,
    PRIMARY,
    SPECTRUM,
    describe_overall,
    overall_parts,
    primary_from,
    score_names,
)
from vigil.training.gaussian import fit_gaussian
from vigil.training.graph_ops import (
    BLUR_SIGMA,
    BLUR_WINDOW,
    SSIM_SIGMA,
    SSIM_WINDOW,
    GaussianBlur,
    odd_window,
    packed_rows,
    row_mean,
    row_sum,
    ssim_map,
)
from vigil.training.head import DefectHead, mirrored_logits
from vigil.training.local import LocalMaps
from vigil.training.models import AutoEncoder, kl_divergence
from vigil.training.spectrum import Spectrum

LOG_EPS = 1e-6
KNN_K = 5
LAYOUT_CHUNK = 1 << 22  # values layout_share holds in float64 at a time (32 MiB)
KNN_BANK = 4096  # at most this many training codes are kept for knn (4096 x latent_dim floats)
Maps = tuple[Tensor, Tensor, Tensor]  # the local map, the defect logits, their sum


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

    def __init__(
        self, model: AutoEncoder, head: DefectHead | None = None, local: bool = True
    ) -> None:
        """`local`: with the local detectors (the local maps and the defect `head`, a fresh
        one unless given): the scores `local`, `defect` and `heatmap` and the `anomaly_map`
        output."""
        super().__init__()
        self.model = model
        self.primary_from = primary_from(local)
        self.overall_from = overall_parts(local)  # those `overall` takes: choose_overall
        self.layout: float | None = None
        self.head: DefectHead | None = None
        if local:
            self.head = head if head is not None else DefectHead(model.cfg.channels).eval()
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
        self.spectrum = Spectrum(cfg.channels, h, w)
        self.local = LocalMaps(cfg.channels, h, w) if local else None
        self.register_buffer("log_mean", torch.zeros(len(COMBINED_FROM)))
        self.register_buffer("log_std", torch.ones(len(COMBINED_FROM)))
        self.register_buffer("overall_mean", torch.zeros(len(self.primary_from)))
        self.register_buffer("overall_std", torch.ones(len(self.primary_from)))

    @property
    def has_local(self) -> bool:
        return self.local is not None

    def score_names(self) -> list[str]:
        return score_names(self.variational, self.has_local)

    def raw_scores(
        self, x: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Maps | None]:
        """Scores before `combined`, the error map, x_hat, the code and the maps
        [N, 1, H, W] (local, defect logits, their standardised sum) that `local`, `defect`
        and `heatmap` are the maxima of."""
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
            SPECTRUM: self.spectrum(x),
        }
        maps = None
        if self.local is not None and self.head is not None:
            local = self.local(x, x_hat)
            local_map = torch.maximum(torch.maximum(local[:, :1], local[:, 1:2]), local[:, 2:3])
            defect_map = mirrored_logits(self.head, x)
            scores[LOCAL] = local_map.flatten(1).amax(1)  # a max is exact in any order
            scores[DEFECT] = defect_map.flatten(1).amax(1)
            fused = self.fuse(local_map, defect_map)
            scores[HEATMAP] = fused.flatten(1).amax(1)
            maps = (local_map, defect_map, fused)
        if logvar is not None:
            # kl_divergence on zero-padded rows: a padded (0, 0) adds exactly 0
            scores["kl"] = kl_divergence(packed_rows(mu), packed_rows(logvar))
        return scores, sq.mean(1, keepdim=True), x_hat, mu, maps

    def fuse(self, local_map: Tensor, defect_map: Tensor) -> Tensor:
        """The two maps [N, 1, H, W], each in the units of its part of `overall` (its images'
        maxima on validation images), added: a defect both maps see at one place outranks
        the stray peaks either has on normal images (benchmarks/QUALITY_NOTES.md, goal 1,
        round 4)."""
        return self.in_overall_units(LOCAL, local_map) + self.in_overall_units(DEFECT, defect_map)

    def in_overall_units(self, part: str, values: Tensor) -> Tensor:
        """values of one part of `overall` (a score or its map), standardised as it is there."""
        at = self.primary_from.index(part)
        return (values - self.overall_mean[at]) / self.overall_std[at]

    def knn_distance(self, mu: Tensor) -> Tensor:
        """Mean distance to the KNN_K nearest training codes (matmul + TopK: exportable)."""
        q = mu / self.knn_scale
        d2 = row_sum(q * q)[:, None] - 2.0 * q @ self.knn_bank.T + self.knn_bank_sq
        k = min(KNN_K, int(self.knn_bank.shape[0]))  # a Python int: a constant in the graph
        nearest = torch.topk(d2, k, dim=1, largest=False).values
        return row_mean(nearest.clamp_min(0.0).sqrt())

    def log_scores(self, scores: dict[str, Tensor]) -> Tensor:
        """[N, len(COMBINED_FROM)] logs of the combined scores, in whole-packet rows."""
        stacked = packed_rows(torch.stack([scores[n] for n in COMBINED_FROM], dim=1), fill=1.0)
        return torch.log(stacked + LOG_EPS)[:, : len(COMBINED_FROM)]

    def combine(self, scores: dict[str, Tensor]) -> Tensor:
        return row_mean((self.log_scores(scores) - self.log_mean) / self.log_std)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        scores, error_map, x_hat, mu, maps = self.raw_scores(x)
        scores[COMBINED] = self.combine(scores)
        scores[PRIMARY] = self.overall(scores)
        out = {
            **scores,
            ERROR_MAP_OUTPUT: error_map,
            RECONSTRUCTION_IMAGE_OUTPUT: x_hat,
            LATENT_OUTPUT: mu,
        }
        if maps is not None:
            out[ANOMALY_MAP_OUTPUT] = self.anomaly_map(maps)
        return out

    @torch.no_grad()
    def fit_latent_density(self, mu: Tensor) -> None:
        """Fit the Gaussian of the training codes (shrunk covariance, so it inverts safely)."""
        mean, precision = fit_gaussian(mu)
        self.latent_mean.copy_(mean.float())
        self.latent_precision.copy_(precision.float())
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
    def fit_spectrum(self, train: Tensor, batch: int = 512) -> None:
        device = next(self.parameters()).device
        self.spectrum.fit(b.to(device) for b in train.split(batch))

    @torch.no_grad()
    def fit_local(self, train: Tensor, val: Tensor, batch: int = 256) -> None:
        """The local maps' Gaussians on training images, their standardisation on validation."""

        def pairs(images: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
            device = next(self.parameters()).device
            for b in images.split(batch):
                b = b.to(device)
                yield b, self.model.decode(self.model.encode(b)[0])

        if self.local is None:
            return
        local = self.local
        local.fit_gaussians(lambda: pairs(train))
        local.fit_standardisation(torch.cat([local.distances(*p) for p in pairs(val)]))

    @torch.no_grad()
    def fit_standardisation(self, images: Tensor, batch: int = 512) -> None:
        """Standardise on validation images: the logs `combined` averages, then the parts of
        `overall`."""
        scores = self._scores_of(images, batch)
        logs = self.log_scores(scores)
        self.log_mean.copy_(logs.mean(0))
        self.log_std.copy_(logs.std(0).clamp_min(1e-6))
        self._fit_overall(scores)
        if self.has_local:  # `heatmap` adds the maps in the units just fitted: score it again
            self._fit_overall(self._scores_of(images, batch))

    def _fit_overall(self, scores: dict[str, Tensor]) -> None:
        parts = torch.stack([self.combine(scores), *(scores[n] for n in self.primary_from[1:])], 1)
        self.overall_mean.copy_(parts.mean(0))
        self.overall_std.copy_(parts.std(0).clamp_min(1e-6))

    def _scores_of(self, images: Tensor, batch: int) -> dict[str, Tensor]:
        device = self.log_mean.device
        parts = [self.raw_scores(b.to(device))[0] for b in images.split(batch)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def choose_overall(self, layout: float, tiled: bool) -> str:
        """Choose which parts `overall` takes the max of (`score_names.overall_parts`), for
        normal images with `layout` (`layout_share`), tiled or not; say which."""
        self.layout = layout
        self.overall_from = overall_parts(self.has_local, tiled, layout)
        return self.describe_overall()

    def describe_overall(self) -> str:
        return describe_overall(self.overall_from, self.layout)

    def overall(self, scores: dict[str, Tensor]) -> Tensor:
        """max of the parts in `overall_from`, each standardised on the validation images."""
        parts = torch.stack([scores[n] for n in self.overall_from], dim=1)
        mean, std = self.overall_mean, self.overall_std
        if self.overall_from != self.primary_from:
            at = [self.primary_from.index(n) for n in self.overall_from]
            mean, std = mean[at], std[at]
        return ((parts - mean) / std).amax(1)  # exact: batch-invariant

    def anomaly_map(self, maps: Maps) -> Tensor:
        """[N, 1, H, W]: those of the three maps that `overall` takes, in its units, the
        largest per pixel: its maximum is the local parts' share of `overall`."""
        chosen = [
            self.in_overall_units(part, m)
            for part, m in zip((LOCAL, DEFECT, HEATMAP), maps, strict=True)
            if part in self.overall_from
        ]
        return functools.reduce(torch.maximum, chosen)


def layout_share(images: np.ndarray) -> float:
    """The share of the images' variation that is their mean image's: 1 for copies of one
    image, 0 for crops of a stationary texture (every position alike). By the law of total
    variance: spread of the mean image over pixels / (it + mean per-pixel variance)."""
    total = total_sq = 0.0
    chunk = max(1, LAYOUT_CHUNK // max(1, images[0].size))
    for start in range(0, len(images), chunk):  # float64 a chunk at a time: frames are large
        b = images[start : start + chunk].astype(np.float64)
        total, total_sq = total + b.sum(0), total_sq + (b * b).sum(0)
    mean = np.asarray(total) / len(images)
    between = float(mean.var())
    within = float((np.asarray(total_sq) / len(images) - mean * mean).mean())
    return between / (between + within) if between + within > 0 else 0.0
