"""Synthetic defects drawn on normal images: the training data of the defect head.

Normal-only data has no defects to learn from, so the head learns from made-up ones, as
DRAEM and CutPaste do: a random region of a normal image is replaced, partly or wholly,
by content that does not belong there. The shapes and contents are generic on purpose
(the head must find defects nobody drew for it):

- shapes: blobs (smooth random noise above a random quantile: 2-25 % of the image, one
  piece or several; a quarter with feathered edges), strokes (thin random-walk polylines,
  0.6-2.2 px wide: scratches, cracks, threads) and soft spots (a Gaussian bump, sigma
  1-5 px, added as a brightness change: stains and smudges have no edge at all);
- contents: another normal image turned by a multiple of 90 degrees (foreign texture),
  a flat level near the image's mean (missing texture), the image blurred (smoothed
  detail), shifted in brightness, with its contrast lowered or raised, with noise added,
  or a random level per channel (a stain of another colour); strokes take the strong ones
  (shift, contrast, level).

Amplitudes are in units of each image's own standard deviation, so the same generator
serves dark and bright, flat and busy data. Blended with an opacity of 0.3-1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

NORMAL_SHARE = 0.25  # images left as they are: the head must also learn to say "nothing"
STROKE_SHARE = 0.35
COVER = (0.02, 0.25)  # a blob's share of the image
STROKE_SEGMENTS = 4
FILLS = ("foreign", "flat", "blurred", "shifted", "contrast", "noisy", "level")
STRONG_FILLS = ("shifted", "contrast", "level")
MARKED = 0.2  # coverage from which a pixel counts as defective in the target
FEATHERED_SHARE = 0.25  # blobs with soft edges: stains and smudges fade out, cut-outs do not
FEATHER_SIGMA = (0.5, 2.0)  # px; wider feathering marked faint edges as defects (noisier)
SOFT_SHARE = 0.2  # images given a soft spot instead (benchmarks/QUALITY_NOTES.md, round 5)
SOFT_SIGMA = (1.0, 5.0)  # px: a soft spot's width
SOFT_AMPLITUDE = (1.0, 3.0)  # in units of the image's standard deviation
SOFT_MARKED = 0.3  # share of its peak from which a soft spot's pixel is marked


def uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    """[n, 1, 1, 1] uniform draws: one per image, broadcast over its pixels."""
    return low + torch.rand(n, 1, 1, 1, generator=g) * (high - low)


def signs(n: int, g: torch.Generator) -> Tensor:
    return torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, [radius] * 4, mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def pixel_grid(height: int, width: int) -> tuple[Tensor, Tensor]:
    """[H, W] row and column coordinates of every pixel (float32)."""
    rows = torch.arange(height, dtype=torch.float32)
    cols = torch.arange(width, dtype=torch.float32)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    return ys, xs


def blobs(n: int, height: int, width: int, g: torch.Generator) -> Tensor:
    """[n, 1, H, W] binary masks: smooth noise at a random scale above a random quantile."""
    noise = torch.empty(n, 1, height, width)
    cells = torch.randint(2, 9, (n,), generator=g)  # noise resolution: 2x2 (big) to 8x8 (many)
    for c in cells.unique().tolist():
        rows = (cells == c).nonzero().flatten()
        coarse = torch.randn(len(rows), 1, c, c, generator=g)
        noise[rows] = F.interpolate(coarse, size=(height, width), mode="bicubic")
    flat = noise.flatten(1)
    keep = COVER[0] + torch.rand(n, generator=g) * (COVER[1] - COVER[0])
    rank = ((1 - keep) * (flat.shape[1] - 1)).long()
    threshold = flat.sort(1).values.gather(1, rank[:, None])
    return (flat > threshold).float().view(n, 1, height, width)


def feathered(masks: Tensor, g: torch.Generator) -> Tensor:
    """Soft edges for a random FEATHERED_SHARE of binary masks [n, 1, H, W], peak kept at 1
    (one blur width per batch, drawn from FEATHER_SIGMA)."""
    low, high = FEATHER_SIGMA
    soft = gaussian_blur(masks, low + float(torch.rand(1, generator=g)) * (high - low))
    soft = soft / soft.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    pick = torch.rand(len(masks), 1, 1, 1, generator=g) < FEATHERED_SHARE
    return torch.where(pick, soft, masks)


def strokes(n: int, height: int, width: int, g: torch.Generator) -> Tensor:
    """[n, 1, H, W] anti-aliased random-walk polylines (coverage in [0, 1])."""
    ys, xs = pixel_grid(height, width)
    point = torch.rand(n, 2, generator=g) * torch.tensor([height, width], dtype=torch.float32)
    heading = torch.rand(n, generator=g) * 2 * math.pi
    step = (0.1 + 0.5 * torch.rand(n, generator=g)) * min(height, width) / STROKE_SEGMENTS
    curl = 0.8 * torch.rand(n, generator=g)
    thickness = 0.6 + 1.6 * torch.rand(n, generator=g)
    nearest = torch.full((n, height, width), float("inf"))
    for _ in range(STROKE_SEGMENTS):
        heading = heading + curl * torch.randn(n, generator=g)
        end = point + step[:, None] * torch.stack([heading.sin(), heading.cos()], 1)
        nearest = torch.minimum(nearest, _distance_to_segment(ys, xs, point, end))
        point = end
    return (thickness[:, None, None] / 2 + 0.5 - nearest).clamp(0, 1)[:, None]


def _distance_to_segment(ys: Tensor, xs: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """[n, H, W] distance of each pixel to the segment a[i] -> b[i]."""
    ay, ax = a[:, 0, None, None], a[:, 1, None, None]
    dy, dx = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
    length2 = (dy * dy + dx * dx).clamp_min(1e-6)
    t = (((ys - ay) * dy + (xs - ax) * dx) / length2).clamp(0, 1)
    return torch.hypot(ys - (ay + t * dy), xs - (ax + t * dx))


def soft_spots(x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """x [N, C, H, W] with a Gaussian bump added to each (brighter or darker), and its mask.

    Feathered blobs keep a flat top; a stain or smudge fades from its centre outwards and
    has no edge for the head to find, so it learns these apart.
    """
    n, _, height, width = x.shape
    ys, xs = pixel_grid(height, width)
    cy = torch.rand(n, 1, 1, generator=g) * height
    cx = torch.rand(n, 1, 1, generator=g) * width
    sigma = uniform(n, *SOFT_SIGMA, g).view(n, 1, 1)
    bump = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))[:, None]
    std = x.std((1, 2, 3), keepdim=True).clamp_min(0.02)
    amplitude = signs(n, g) * uniform(n, *SOFT_AMPLITUDE, g) * std
    return (x + bump * amplitude).clamp(0, 1), (bump > SOFT_MARKED).float()


def contents(x: Tensor, other: Tensor, g: torch.Generator) -> Tensor:
    """[len(FILLS), N, C, H, W]: each kind of defect content for each image of x."""
    n = x.shape[0]
    mean = x.mean((1, 2, 3), keepdim=True)
    std = x.std((1, 2, 3), keepdim=True).clamp_min(0.02)
    quarter_turns = int(torch.randint(0, 4, (1,), generator=g))
    lower = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    gain = torch.where(lower, uniform(n, 0.0, 0.5, g), uniform(n, 1.6, 3.0, g))
    by_kind = {
        "foreign": torch.rot90(other, quarter_turns, (2, 3)),
        "flat": (mean + signs(n, g) * uniform(n, 0.0, 1.0, g) * std).expand_as(x),
        "blurred": gaussian_blur(x, 1.0 + 2.0 * float(torch.rand(1, generator=g))),
        "shifted": x + signs(n, g) * uniform(n, 0.7, 3.0, g) * std,
        "contrast": mean + (x - mean) * gain,
        "noisy": x + torch.randn(x.shape, generator=g) * uniform(n, 0.5, 2.0, g) * std,
        "level": torch.rand(n, x.shape[1], 1, 1, generator=g).expand_as(x),
    }
    return torch.stack([by_kind[name] for name in FILLS])


def synthesise(x: Tensor, other: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Normal images x [N, C, H, W] in [0, 1] -> (images with defects, target masks [N, 1, H, W]).

    `other`: as many other normal images, the source of foreign texture.
    """
    n, _, height, width = x.shape
    is_stroke = torch.rand(n, 1, 1, 1, generator=g) < STROKE_SHARE
    blob = feathered(blobs(n, height, width, g), g)
    mask = torch.where(is_stroke, strokes(n, height, width, g), blob)
    strong = torch.tensor([FILLS.index(f) for f in STRONG_FILLS])
    kind = torch.where(
        is_stroke.flatten(),
        strong[torch.randint(0, len(strong), (n,), generator=g)],
        torch.randint(0, len(FILLS), (n,), generator=g),
    )
    fill = contents(x, other, g)[kind, torch.arange(n)]
    alpha = mask * uniform(n, 0.3, 1.0, g)
    defective = (x * (1 - alpha) + fill * alpha).clamp(0, 1)
    untouched = torch.rand(n, 1, 1, 1, generator=g) < NORMAL_SHARE
    images = torch.where(untouched, x, defective)
    # A pixel a fifth covered is marked: a thin stroke between pixel centres is still a defect.
    target = torch.where(untouched, torch.zeros_like(mask), (mask > MARKED).float())
    soft = torch.rand(n, 1, 1, 1, generator=g) < SOFT_SHARE
    spotted, spot_target = soft_spots(x, g)
    return torch.where(soft, spotted, images), torch.where(soft, spot_target, target)
