"""The training loop: Adam, per-epoch validation, early stopping with the best weights kept."""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vigil.training.models import AutoEncoder, kl_divergence, reconstruction_loss


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    beta: float = 1.0
    loss: str = "mse"
    denoise: float = 0.0
    seed: int = 0
    progress: bool = True


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "seconds": self.seconds}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")


def losses(model: AutoEncoder, x: Tensor, target: Tensor, cfg: FitConfig) -> dict[str, Tensor]:
    """Mean over the batch of the per-image loss terms."""
    out = model(x, sample=model.training)
    recon = reconstruction_loss(out, target, cfg.loss)
    kl = kl_divergence(out.mu, out.logvar) if out.logvar is not None else torch.zeros_like(recon)
    return {"loss": (recon + cfg.beta * kl).mean(), "recon": recon.mean(), "kl": kl.mean()}


def corrupt(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Denoising input: additive Gaussian noise, clipped back to [0, 1]."""
    if sigma <= 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return (x + sigma * noise).clamp(0.0, 1.0)


@torch.no_grad()
def evaluate_loss(model: AutoEncoder, data: Tensor, cfg: FitConfig, device: torch.device) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(data), 512):
        x = data[start : start + 512].to(device)
        total += float(losses(model, x, x, cfg)["loss"]) * len(x)
    return total / len(data)


def fit(model: AutoEncoder, train: Tensor, val: Tensor, cfg: FitConfig) -> History:
    """Train on `train`, keep the weights with the best validation loss."""
    seed_everything(cfg.seed)
    device = pick_device()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    history = History(device=str(device))
    best, best_state, stale, started = (
        float("inf"),
        copy.deepcopy(model.state_dict()),
        0,
        time.time(),
    )
    bar = tqdm(range(1, cfg.epochs + 1), desc="training", unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        tick = time.time()
        model.train()
        order = torch.randperm(len(train), generator=generator)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        for start in range(0, len(train), cfg.batch_size):
            target = train[order[start : start + cfg.batch_size]].to(device)
            terms = losses(model, corrupt(target, cfg.denoise, noise), target, cfg)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            for key, value in terms.items():
                sums[key] += float(value.detach()) * len(target)
        row = {key: value / len(train) for key, value in sums.items()}
        row["val_loss"] = evaluate_loss(model, val, cfg, device)
        row["epoch"], row["seconds"] = epoch, time.time() - tick
        row["images_per_second"] = len(train) / row["seconds"]
        history.epochs.append(row)
        if row["val_loss"] < best * (1 - 1e-4):  # the loss is non-negative
            best, stale, history.best_epoch = row["val_loss"], 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        bar.set_postfix(
            loss=f"{row['loss']:.2f}",
            recon=f"{row['recon']:.2f}",
            kl=f"{row['kl']:.2f}",
            val=f"{row['val_loss']:.2f}",
        )
        if stale >= cfg.patience:
            bar.write(f"early stop at epoch {epoch}: no better validation loss for {stale} epochs")
            break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.time() - started
    return history
