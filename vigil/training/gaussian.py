"""Gaussians of normal features, fitted in closed form: the latent code's, `spectrum`'s and
the local maps' (`training.local`). The covariance is shrunk towards a multiple of the
identity before it is inverted, so a feature that barely varies in the training images
cannot make the precision blow up."""

from __future__ import annotations

import torch
from torch import Tensor

SHRINK = 1e-3  # covariance shrinkage, relative to the mean variance


def shrunk(cov: Tensor, floor: float = 1e-8) -> Tensor:
    """cov + (SHRINK * mean variance + floor) * I."""
    dim = cov.shape[0]
    return cov + (SHRINK * torch.trace(cov) / dim + floor) * torch.eye(dim, dtype=cov.dtype)


def fit_gaussian(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (in the samples' dtype) and precision (inverse shrunk covariance, float64) of
    samples [N, D]."""
    mean = samples.mean(0)
    dim = samples.shape[1]
    cov = torch.cov((samples - mean).T.double()).reshape(dim, dim)
    return mean, torch.linalg.inv(shrunk(cov))
