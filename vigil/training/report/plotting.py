"""What every figure shares: colours, image tiles and mosaics, saving a figure as PNG.

Figures use matplotlib's object API (`matplotlib.figure.Figure`, rendered by Agg when
saved), never pyplot: no global backend, no figure registry, every figure freed once saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from vigil.training.evaluate import Evaluation

NORMAL_COLOR = "#1f77b4"


ANOMALY_COLOR = "#d62728"


WRONG_COLOR = "#d62728"


SEED = 0


DPI = 110


def has_anomalies(ev: Evaluation) -> bool:
    return bool((ev.labels == 1).any())


def has_normals(ev: Evaluation) -> bool:
    return bool((ev.labels == 0).any())


def save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, facecolor="white")  # constrained layout: no "tight" pass
    fig.clear()
    return name


def cmap(name: str) -> Colormap:
    return colormaps[name].with_extremes(bad="white")


def tile(image: np.ndarray) -> np.ndarray:
    """[C, H, W] -> [H, W] (grayscale) or [H, W, 3] (RGB), clipped to [0, 1]."""
    chw = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)


def mosaic(tiles: np.ndarray, rows: int, cols: int, pad: int) -> np.ndarray:
    """Tiles [n, H, W(, 3)] laid out row-major; gaps are NaN (grayscale) or white (RGB)."""
    n, h, w = tiles.shape[:3]
    fill = 1.0 if tiles.ndim == 4 else np.nan
    shape = (rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, *tiles.shape[3:])
    canvas = np.full(shape, fill, dtype=np.float32)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = tiles[i]
    return canvas


def tile_gap(height: int) -> int:
    return max(1, height // 14)


def show(ax: Axes, image: np.ndarray, **kwargs: Any) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap=cmap("gray"), vmin=0.0, vmax=1.0, interpolation="nearest", **kwargs)
    else:
        ax.imshow(image, interpolation="nearest", **kwargs)


def bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
