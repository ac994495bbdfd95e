"""Training on tiles of large images: when to tile, the tiles to train on, scoring whole frames.

Folders of large images used to be resized to at most 64x64, which erases a defect of a
few pixels. By default, images whose shorter side exceeds `AUTO_TILE_ABOVE` are now kept
at their own resolution (the frame) and the model learns `DEFAULT_TILE`-pixel tiles of
them; the bundle records the frame and the stride (`manifest.tiling`), and every
consumer scores an image by all its tiles (`vigil.core.tiling`).
"""

from __future__ import annotations

import numpy as np

from vigil.core.bundle import InputSpec, Tiling
from vigil.training.data import Images, open_image

AUTO_TILE_ABOVE = 128  # tile images whose shorter side is larger than this (by default)
DEFAULT_TILE = 64
MAX_FRAME_PIXELS = 4096 * 4096
TRAIN_TILES = 4000  # random tiles drawn from the training frames (~1,900 steps of 64)
VAL_TILES = 1000


def natural_size(images: Images) -> tuple[int, int]:
    """(height, width) of the first image, as stored."""
    sample = images.arrays if images.arrays is not None else images.floats
    if sample is not None:
        return int(sample.shape[1]), int(sample.shape[2])
    first = open_image(images.files[0])
    return first.height, first.width


def plan(
    images: Images, size: tuple[int, int] | None, tile_size: int | None, stride: int | None
) -> Tiling | None:
    """The tiling for these images, or None to resize whole images as before.

    `tile_size` None: automatic (tile when the shorter side exceeds AUTO_TILE_ABOVE and no
    --image-size was given); 0: never. `size` (--image-size) sets the frame when tiling.
    """
    if tile_size == 0 or (tile_size is None and size is not None):
        return None
    height, width = size or natural_size(images)
    if tile_size is None and min(height, width) <= AUTO_TILE_ABOVE:
        return None
    if height * width > MAX_FRAME_PIXELS:
        raise ValueError(
            f"{height}x{width} frames are over {MAX_FRAME_PIXELS} pixels; pass --image-size"
        )
    tile = tile_size or DEFAULT_TILE
    if tile > min(height, width):
        raise ValueError(f"tile size {tile} is larger than the {height}x{width} images")
    step = stride or max(1, tile // 2)
    return Tiling(frame_height=height, frame_width=width, stride_height=step, stride_width=step)


def tile_spec(frame: InputSpec, tile: int) -> InputSpec:
    return frame.model_copy(update={"height": tile, "width": tile})


def random_tiles(frames: np.ndarray, tile: int, n: int, seed: int) -> np.ndarray:
    """n tiles [n, C, tile, tile] at random positions of random frames [N, C, H, W]."""
    rng = np.random.default_rng(seed)
    _, c, h, w = frames.shape
    which = rng.integers(0, len(frames), n)
    tops, lefts = rng.integers(0, h - tile + 1, n), rng.integers(0, w - tile + 1, n)
    out = np.empty((n, c, tile, tile), dtype=np.float32)
    for i, (f, t, left) in enumerate(zip(which, tops, lefts, strict=True)):
        out[i] = frames[f, :, t : t + tile, left : left + tile]
    return out
