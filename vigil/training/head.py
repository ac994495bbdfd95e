"""The defect head: a small U-Net that segments defects, trained on synthetic ones.

A reconstruction-based score misses what the decoder can also draw, and a Gaussian of
local features misses what normal pixels also look like somewhere; small stains, shifts,
smoothed or missing patches on a busy texture fall through both. The field's strongest
from-scratch answer (DRAEM; CutPaste) adds a discriminative part trained on defects made
from the normal images themselves (`training.defects`). This is that part, sized for
CPUs: two stride-2 stages (receptive field ~40 px) and one skip per stage, trained on
32 x 32 crops, applied fully convolutionally to the whole input and its mirror images
(`mirrored_logits`). Its output is a logit per pixel; the score graph uses the logits as
they are (a sigmoid and a blur lowered the AUROC of thin defects: they are only a pixel
or two wide).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from vigil.training.defects import synthesise

MIRRORS = ((3,), (2,), (2, 3))  # left-right, top-bottom, both: views the head also scores
CROP = 32  # training crops: a defect and enough of its surroundings, at a quarter of the cost


@dataclass(frozen=True)
class HeadConfig:
    """`vigil train` passes the fields it shares by name (`TrainConfig.head_config`); the
    head's batch and learning rate are its own, not the autoencoder's."""

    head_steps: int = 2400
    head_batch: int = 32
    head_lr: float = 3e-3
    head_ema: float = 0.99  # the weights kept: an average over the last ~100 steps
    seed: int = 0
    progress: bool = True


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DefectHead(nn.Module):
    """images [N, C, H, W] in [0, 1] -> defect logits [N, 1, H, W] (any H, W >= 4)."""

    def __init__(self, channels: int, width: int = 8) -> None:
        super().__init__()
        w = width
        self.at_full = nn.Sequential(_conv(channels, w), _conv(w, w))
        self.at_half = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.at_quarter = nn.Sequential(
            _conv(2 * w, 2 * w, stride=2), _conv(2 * w, 2 * w, dilation=2)
        )
        self.up_half = _conv(4 * w, 2 * w)
        self.up_full = _conv(3 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        full = self.at_full(x)
        half = self.at_half(full)
        quarter = self.at_quarter(half)
        up = self.up_half(torch.cat([_upsample(quarter, half), half], 1))
        up = self.up_full(torch.cat([_upsample(up, full), full], 1))
        return self.out(up)


def mirrored_logits(head: DefectHead, x: Tensor) -> Tensor:
    """The head's logits averaged over x and its three mirror images, each mirrored back.

    A test-time ensemble: a normal pixel that one view takes for a defect rarely fools all
    four, so normal images' strongest logits drop more than defects' (textures: mean image
    AUROC +0.01 to +0.02 a texture: benchmarks/QUALITY_NOTES.md). Four calls, not one on a
    concatenated batch: the exported graph would freeze the batch size in the split.
    """
    total = head(x)
    for dims in MIRRORS:
        total = total + head(x.flip(dims)).flip(dims)
    return total * (1.0 / (len(MIRRORS) + 1))


def _upsample(t: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017): most pixels are easy normals; it weighs the hard ones."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = p * target + (1 - p) * (1 - target)
    return ((1 - p_true) ** gamma * ce).mean()


@dataclass
class HeadHistory:
    steps: int
    final_loss: float
    seconds: float


def fit_head(head: DefectHead, images: Tensor, cfg: HeadConfig) -> HeadHistory:
    """Train on synthetic defects drawn on random crops of normal images [N, C, H, W]."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # channels-last convolutions train about twice as fast on CPU (measured; BENCHMARKS.md)
    head.to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.head_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.head_lr, total_steps=cfg.head_steps
    )
    crop_h, crop_w = min(CROP, images.shape[2]), min(CROP, images.shape[3])
    started, smoothed = time.time(), 0.0
    # An exponential average of the weights (and batch-norm statistics): the last steps'
    # noise, not the last step's, decides the head (benchmarks/QUALITY_NOTES.md, round 3)
    averaged = AveragedModel(
        head, multi_avg_fn=get_ema_multi_avg_fn(cfg.head_ema), use_buffers=True
    )
    bar = tqdm(range(cfg.head_steps), desc="defect head", unit="step", disable=not cfg.progress)
    for step in bar:
        batch = images[torch.randint(0, len(images), (2 * cfg.head_batch,), generator=g)]
        top = int(torch.randint(0, images.shape[2] - crop_h + 1, (1,), generator=g))
        left = int(torch.randint(0, images.shape[3] - crop_w + 1, (1,), generator=g))
        crops = batch[:, :, top : top + crop_h, left : left + crop_w]
        x, target = synthesise(crops[: cfg.head_batch], crops[cfg.head_batch :], g)
        loss = focal_loss(head(x.contiguous(memory_format=torch.channels_last)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step >= cfg.head_steps // 2:  # the first half's weights are far from the answer
            averaged.update_parameters(head)
        value = loss.item()
        smoothed = value if step == 0 else 0.95 * smoothed + 0.05 * value
        if step % 20 == 0:
            bar.set_postfix(loss=f"{smoothed:.4f}")
    head.load_state_dict(averaged.module.state_dict())
    head.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    return HeadHistory(cfg.head_steps, smoothed, time.time() - started)
