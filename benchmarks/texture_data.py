"""Texture benchmark data: real surface photos, crops at several scales, synthetic local defects.

Source photos: scikit-image's bundled `brick`, `grass` and `gravel` (512x512 grayscale,
CC0; they ship inside the scikit-image wheel, nothing is downloaded). Each photo is split
by columns: normal training crops come from the left 60 %, test crops (normal and
defective) from the right 40 %, so no test pixel was seen in training. (The first version
split by rows; the brick wall is photographed in perspective, its bricks larger towards the
bottom, so the test crops came from another scale than the training crops: a change no
detector should call normal, and calibrated thresholds flagged 17-35 % of normal test
crops. Both column ranges span every row.)

Normal images are square crops of side 64, 96 or 128 source pixels, resized to 64x64 and
randomly flipped left-right. Defects are drawn on test crops at model resolution, with a
pixel mask each, in seven kinds and three sizes (the defect's extent, in pixels of the
64x64 image):

- high contrast: `scratch` (a thin straight line, bright or dark), `spot` (a disk, bright or
  dark), `crack` (a dark random-walk path);
- low contrast or detail-removing: `stain` (a soft blob), `missing` (a patch filled with the
  crop's mean: texture gone), `smoothed` (a patch blurred, sigma 2.5), `brightness` (a patch
  shifted).

Two contrast levels (`Contrast`). `visible`, the benchmark's default, sets the low-contrast
kinds' amplitude in units of the texture's own pixel standard deviation (sigma: brick 0.10,
grass and gravel 0.15), 1.5-2.5 sigma, and a crack darkens its path by 70-90 %: every defect
is visible to a person who compares the crop with its clean version, as MVTec AD's are. A
detail-removing defect can still change nothing (a smoothed patch on a flat brick face):
at `visible`, a defect whose RMS change inside its mask is below `least_change` (0.25 sigma,
about 6 grey levels on brick) is drawn again elsewhere; before this rule, 42 % of brick's
small smoothed patches were such non-defects.
`faint` is the first version of this benchmark: stains of +-0.08-0.15 and shifts of +-0.1
whatever the texture (0.5-1 sigma on grass and gravel), cracks darkening by 50-70 %; side by
side with the clean crop most of those on grass and gravel cannot be seen at all
(benchmarks/results/texture_defects.png shows both levels).

Everything is a function of a seed, so CI can rebuild the same data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

TEXTURES = ("brick", "grass", "gravel")
KINDS = ("scratch", "spot", "crack", "stain", "missing", "smoothed", "brightness")
HIGH_CONTRAST = ("scratch", "spot", "crack")
SIZES = {"small": 5, "medium": 10, "large": 18}
CROP_SCALES = (1.0, 1.5, 2.0)
TRAIN_COLUMNS = 0.6  # the left 60 % of each photo for normal training crops

Contrast = Literal["visible", "faint"]


@dataclass(frozen=True)
class Amplitudes:
    """How strong the defects are drawn: `stain`/`shift` in units of the texture's sigma
    (visible) or absolute (faint); `crack` is the share of brightness a crack removes."""

    stain: tuple[float, float]
    shift: tuple[float, float]
    crack: tuple[float, float]
    relative: bool
    least_change: float = 0.0  # RMS change inside the mask, in sigma, below which it is redrawn


AMPLITUDES: dict[str, Amplitudes] = {
    "visible": Amplitudes(
        stain=(1.5, 2.5), shift=(1.5, 2.5), crack=(0.7, 0.9), relative=True, least_change=0.25
    ),
    "faint": Amplitudes(stain=(0.08, 0.15), shift=(0.1, 0.1), crack=(0.5, 0.7), relative=False),
}
REDRAWS = 20  # tries for a defect that changes its pixels enough


def photo(name: str) -> np.ndarray:
    """A texture photo as float32 [H, W] in [0, 1]."""
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0


def region(image: np.ndarray, part: str) -> np.ndarray:
    cut = round(image.shape[1] * TRAIN_COLUMNS)
    return image[:, :cut] if part == "train" else image[:, cut:]


def crops(source: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n random square crops at several scales, resized to size x size: float32 [n, size, size]."""
    out = np.empty((n, size, size), dtype=np.float32)
    h, w = source.shape
    for i in range(n):
        side = min(round(size * rng.choice(CROP_SCALES)), h, w)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = source[top : top + side, left : left + side]
        if side != size:
            patch = np.asarray(
                Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR)
            )
        out[i] = patch[:, ::-1] if rng.random() < 0.5 else patch
    return out


# ---------------------------------------------------------------- defects

Defect = tuple[np.ndarray, np.ndarray]  # (image, bool mask)


@dataclass(frozen=True)
class Strength:
    """A contrast level applied to one texture (whose pixel standard deviation is `sigma`)."""

    amplitudes: Amplitudes
    sigma: float

    @classmethod
    def of(cls, contrast: Contrast, texture: np.ndarray) -> Strength:
        return cls(AMPLITUDES[contrast], float(np.std(texture)))

    def draw(self, bounds: tuple[float, float], rng: np.random.Generator) -> float:
        value = float(rng.uniform(*bounds))
        return value * self.sigma if self.amplitudes.relative else value


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip(r + 0.5 - d, 0.0, 1.0)  # anti-aliased edge


def _line(shape: tuple[int, int], points: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased polyline through `points` [[y, x], ...] of the given width."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    best = np.full(shape, np.inf, dtype=np.float32)
    for (y0, x0), (y1, x1) in itertools.pairwise(points):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        best = np.minimum(best, np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)))
    return np.clip(width / 2 + 0.5 - best, 0.0, 1.0)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma)
    g = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    g /= g.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, g, mode="valid"), 0, rows)


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _centre(shape: tuple[int, int], margin: float, rng: np.random.Generator) -> tuple[float, float]:
    m = min(margin, shape[0] / 2 - 1)
    return float(rng.uniform(m, shape[0] - m)), float(rng.uniform(m, shape[1] - m))


def _scratch(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    cy, cx = _centre(x.shape, s / 2 + 1, rng)
    angle = rng.uniform(0, np.pi)
    centre = np.array([cy, cx])
    half = s / 2 * np.array([np.sin(angle), np.cos(angle)])
    weight = _line(x.shape, np.array([centre - half, centre + half]), 1.0 + (s > 10))
    target = 1.0 if _sign(rng) > 0 else 0.0
    return x + weight * 0.8 * (target - x), weight > 0.25


def _spot(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    cy, cx = _centre(x.shape, s / 2 + 1, rng)
    weight = _disk(x.shape, cy, cx, s / 2)
    return x + weight * _sign(rng) * rng.uniform(0.25, 0.4), weight > 0.25


def _crack(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    cy, cx = _centre(x.shape, s / 2 + 1, rng)
    steps = max(3, s // 3)
    heading = rng.uniform(0, 2 * np.pi)
    points = [np.array([cy, cx]) - s / 2 * np.array([np.sin(heading), np.cos(heading)])]
    for _ in range(steps):
        heading += rng.normal(0, 0.6)
        points.append(points[-1] + s / steps * np.array([np.sin(heading), np.cos(heading)]))
    weight = _line(x.shape, np.array(points), 1.0)
    return x * (1 - weight * rng.uniform(*a.amplitudes.crack)), weight > 0.25


def _stain(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    cy, cx = _centre(x.shape, s / 2, rng)
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]]
    weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (s / 3) ** 2))
    return x + weight * _sign(rng) * a.draw(a.amplitudes.stain, rng), weight > 0.3


def _box(shape: tuple[int, int], s: int, rng: np.random.Generator) -> np.ndarray:
    cy, cx = _centre(shape, s / 2, rng)
    top, left = round(cy - s / 2), round(cx - s / 2)
    mask = np.zeros(shape, dtype=bool)
    mask[max(top, 0) : top + s, max(left, 0) : left + s] = True
    return mask


def _missing(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    mask = _box(x.shape, s, rng)
    return np.where(mask, x.mean(), x), mask


def _smoothed(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    mask = _box(x.shape, s, rng)
    return np.where(mask, _blur(x, 2.5), x), mask


def _brightness(x: np.ndarray, s: int, rng: np.random.Generator, a: Strength) -> Defect:
    mask = _box(x.shape, s, rng)
    return np.where(mask, x + _sign(rng) * a.draw(a.amplitudes.shift, rng), x), mask


DEFECTS: dict[str, Callable[[np.ndarray, int, np.random.Generator, Strength], Defect]] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "stain": _stain,
    "missing": _missing,
    "smoothed": _smoothed,
    "brightness": _brightness,
}


def add_defect(
    x: np.ndarray, kind: str, size: int, rng: np.random.Generator, strength: Strength
) -> Defect:
    """One defect on a float [H, W] image: (defective image clipped to [0, 1], bool mask),
    drawn again (elsewhere, other parameters) while it changes its pixels by less than the
    contrast level's `least_change`."""
    least = strength.amplitudes.least_change * strength.sigma
    for _ in range(REDRAWS):
        out, mask = DEFECTS[kind](x.astype(np.float64), size, rng, strength)
        out = np.clip(out, 0.0, 1.0)
        if np.sqrt(np.mean((out[mask] - x[mask]) ** 2)) >= least:
            break
    return out.astype(np.float32), mask


@dataclass
class TextureSet:
    texture: str
    train: np.ndarray  # normal crops for `vigil train` [N, S, S] float32
    test_normal: np.ndarray
    test_anomalous: np.ndarray
    masks: np.ndarray  # [M, S, S] bool, for the anomalous test crops
    kinds: np.ndarray  # [M] defect kind names
    sizes: np.ndarray  # [M] size names


def build(
    texture: str,
    n_train: int = 1000,
    n_test_normal: int = 300,
    n_per_cell: int = 60,
    size: int = 64,
    seed: int = 0,
    contrast: Contrast = "visible",
) -> TextureSet:
    """The benchmark's images for one texture; `n_per_cell` anomalies per kind x size."""
    rng = np.random.default_rng([seed, TEXTURES.index(texture)])
    image = photo(texture)
    strength = Strength.of(contrast, image)
    train = crops(region(image, "train"), n_train, size, rng)
    test_normal = crops(region(image, "test"), n_test_normal, size, rng)
    bases = crops(region(image, "test"), n_per_cell * len(KINDS) * len(SIZES), size, rng)
    anomalous, masks, kinds, sizes = [], [], [], []
    i = 0
    for kind in KINDS:
        for size_name, extent in SIZES.items():
            for _ in range(n_per_cell):
                out, mask = add_defect(bases[i], kind, extent, rng, strength)
                anomalous.append(out)
                masks.append(mask)
                kinds.append(kind)
                sizes.append(size_name)
                i += 1
    return TextureSet(
        texture,
        train,
        test_normal,
        np.stack(anomalous),
        np.stack(masks),
        np.array(kinds),
        np.array(sizes),
    )


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


def picture(path: Path, contrast: Contrast = "visible", extent: int = SIZES["medium"]) -> None:
    """A PNG of defect pairs: a row per kind, per texture a clean crop beside the same crop
    with the defect (at model resolution, enlarged 2x), to see what the benchmark asks."""
    rng = np.random.default_rng(1)
    cell, label, scale = 64, 90, 2
    grid = np.ones((len(KINDS) * (cell + 4), len(TEXTURES) * 2 * (cell + 4)), np.float32)
    for col, texture in enumerate(TEXTURES):
        image = photo(texture)
        strength = Strength.of(contrast, image)
        clean = crops(region(image, "test"), len(KINDS), cell, rng)
        for row, kind in enumerate(KINDS):
            defective, _ = add_defect(clean[row], kind, extent, rng, strength)
            y, x = row * (cell + 4) + 2, 2 * col * (cell + 4) + 2
            grid[y : y + cell, x : x + cell] = clean[row]
            grid[y : y + cell, x + cell + 4 : x + 2 * cell + 4] = defective
    big = Image.fromarray(to_uint8(grid)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    )
    out = Image.new("L", (big.width + label, big.height + 20), 255)
    out.paste(big, (label, 20))
    draw = ImageDraw.Draw(out)
    for col, texture in enumerate(TEXTURES):
        draw.text(
            (label + 2 * col * (cell + 4) * scale + 4, 4), f"{texture}: clean | defect", fill=0
        )
    for row, kind in enumerate(KINDS):
        draw.text((4, 20 + row * (cell + 4) * scale + cell), kind, fill=0)
    out.save(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Draw the benchmark's defect kinds.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/texture_defects.png"))
    parser.add_argument("--contrast", choices=list(AMPLITUDES), default="visible")
    args = parser.parse_args()
    picture(args.out, args.contrast)
    print(f"wrote {args.out}")
