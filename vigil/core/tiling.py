"""Large images scored by tiles: pure functions of arrays, shared by training, evaluation and serving.

A tiled bundle's graph takes tiles at the model's resolution (`manifest.input`, e.g. 64x64).
An image is resized to the bundle's frame size (`manifest.tiling.frame_height/width`, the
training images' size), cut into tiles at the positions `positions` gives (a regular grid
with the bundle's stride, plus a last row/column flush with the border so every pixel is
covered), every tile goes through the graph in one batched call, each per-image score is
the maximum over the image's tiles, and the tiles' maps are stitched back to the frame
(each pixel the maximum over the tiles covering it). Calibration scores are computed the
same way on whole held-out images, so the target FPR holds per image, not per tile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from vigil.core.bundle import InputSpec, Tiling
from vigil.core.runtime import run_batched

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]
FRAMES_PER_CALL = 8  # in offline scoring: frames whose tiles share one session call


def positions(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one axis: 0, stride, 2*stride, ... and size - tile last."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be positive, not {tile}, {stride}")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def grid(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """[T, 2] (top, left) of every tile of a height x width image, row by row."""
    rows = positions(height, tile[0], stride[0])
    cols = positions(width, tile[1], stride[1])
    return np.array([(r, c) for r in rows for c in cols], dtype=np.int64).reshape(-1, 2)


def count(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> int:
    return len(positions(height, tile[0], stride[0])) * len(positions(width, tile[1], stride[1]))


def cut(image: np.ndarray, tile: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """An image [C, H, W] (H >= tile, W >= tile) as its tiles [T, C, th, tw] (a copy)."""
    c, h, w = image.shape
    if h < tile[0] or w < tile[1]:
        raise ValueError(f"a {h}x{w} image is smaller than the {tile[0]}x{tile[1]} tile")
    corners = grid(h, w, tile, stride)
    out = np.empty((len(corners), c, tile[0], tile[1]), dtype=image.dtype)
    for i, (top, left) in enumerate(corners):
        out[i] = image[:, top : top + tile[0], left : left + tile[1]]
    return out


def stitch(
    maps: np.ndarray, height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]
) -> np.ndarray:
    """Tiles' maps [T, C, th, tw] back to one [C, H, W]: each pixel the max over its tiles."""
    corners = grid(height, width, tile, stride)
    if len(corners) != len(maps):
        raise ValueError(f"{len(maps)} tile maps for a grid of {len(corners)} tiles")
    out = np.full((maps.shape[1], height, width), -np.inf, dtype=maps.dtype)
    for m, (top, left) in zip(maps, corners, strict=True):
        view = out[:, top : top + tile[0], left : left + tile[1]]
        np.maximum(view, m, out=view)
    return out


def tile_max(values: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Per-tile values [sum(counts)] to per-image maxima [len(counts)]."""
    ends = np.cumsum(counts)
    if len(counts) == 0:
        return np.empty(0, dtype=values.dtype)
    if ends[-1] != len(values):
        raise ValueError(f"{len(values)} tile values for {int(ends[-1])} tiles")
    return np.maximum.reduceat(values, np.r_[0, ends[:-1]]) if len(values) else values


def score_tiled(
    run: Runner,
    images: Sequence[np.ndarray],
    tile: tuple[int, int],
    stride: tuple[int, int],
    scores: Sequence[str],
    maps: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Score whole images [C, H, W] by their tiles in one call of `run` (tiles [T, C, th, tw]).

    Returns per-image scores (each the max over the image's tiles, shaped [N]) and, for
    each name in `maps`, the stitched map of every image ([C', H, W] each).
    """
    tiles = [cut(image, tile, stride) for image in images]
    counts = [len(t) for t in tiles]
    out = run(np.ascontiguousarray(np.concatenate(tiles)) if tiles else np.empty(0))
    per_image = {name: tile_max(np.asarray(out[name]), counts) for name in scores}
    stitched: dict[str, list[np.ndarray]] = {name: [] for name in maps}
    start = 0
    for image, n in zip(images, counts, strict=True):
        for name in maps:
            part = np.asarray(out[name][start : start + n])
            stitched[name].append(stitch(part, image.shape[1], image.shape[2], tile, stride))
        start += n
    return per_image, stitched


def score_frames(
    session: ort.InferenceSession,
    frames: Sequence[np.ndarray] | np.ndarray,
    tiling: Tiling,
    tile_spec: InputSpec,
    scores: Sequence[str],
    maps: Sequence[str] = (),
    frames_per_call: int = FRAMES_PER_CALL,
    tiles_per_call: int = 256,
) -> dict[str, np.ndarray]:
    """A tiled bundle's outputs for whole frames [C, H, W] (preprocessed to the bundle's
    `frame_spec()`): each score [N] the max over the frame's tiles, each map [N, C', H, W]
    stitched; the tiles of `frames_per_call` frames are scored together, `tiles_per_call`
    at a time (the graph is batch-invariant: the split changes no score)."""
    tile = (tile_spec.height, tile_spec.width)
    stride = (tiling.stride_height, tiling.stride_width)
    names = [*scores, *maps]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(frames), max(1, frames_per_call)):
        chunk = list(frames[start : start + frames_per_call])
        per_image, stitched = score_tiled(
            lambda tiles: run_batched(session, tiles, tiles_per_call, names),
            chunk,
            tile,
            stride,
            scores,
            maps,
        )
        for name in scores:
            parts[name].append(per_image[name])
        for name in maps:
            parts[name].append(np.stack(stitched[name]))
    return {name: np.concatenate(p) for name, p in parts.items() if p}
