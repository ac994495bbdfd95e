"""Readers for images at rest, shared by training and batch scoring: IDX files, .npy/.npz
arrays and folders of image files.

They read what a file holds and check its shape; they never preprocess. Images reach a
model through `core.preprocess`, whichever reader found them.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigil.core.errors import VigilError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class DataError(VigilError, ValueError):
    """Data that cannot be used, with a message naming the file or the cause."""

    code = "invalid_data"


@dataclass(frozen=True)
class Images:
    """Images as uint8 arrays [N, H, W(, C)] or as image files, with optional labels."""

    source: str
    arrays: np.ndarray | None = None
    files: tuple[Path, ...] = ()
    floats: np.ndarray | None = None  # float arrays in [0, 1], [N, H, W(, C)]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        if self.arrays is not None:
            return len(self.arrays)
        if self.floats is not None:
            return len(self.floats)
        return len(self.files)

    def select(self, index: np.ndarray) -> Images:
        labels = None if self.labels is None else self.labels[index]
        return Images(
            source=self.source,
            arrays=None if self.arrays is None else self.arrays[index],
            files=tuple(self.files[i] for i in index) if self.files else (),
            floats=None if self.floats is None else self.floats[index],
            labels=labels,
        )

    def of_class(self, label: int, keep: bool = True) -> Images:
        if self.labels is None:
            raise DataError(f"{self.source} has no labels, so --normal-class cannot be used")
        mask = (self.labels == label) if keep else (self.labels != label)
        return self.select(np.flatnonzero(mask))


def is_image_file(name: str) -> bool:
    """Whether a file name has one of the image suffixes a folder is searched for."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> Iterator[Path]:
    """The image files under `folder`, recursively, one directory at a time (names sorted
    within each directory), without listing the whole tree first."""
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if is_image_file(name) and os.path.isfile(os.path.join(root, name)):
                yield Path(root, name)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, raw or .gz) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says {shape} but the file holds {body.size} values")
    return body.reshape(shape)


def read_array_file(path: Path) -> Images:
    """A .npy or .npz file of images (an .npz may hold `images`/`x` and `labels`/`y`)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy/.npz file: {exc}") from exc
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = set(loaded.files)
        key = next((k for k in ("images", "x", "X", "arr_0") if k in keys), None)
        if key is None:
            raise DataError(f"{path}: no array named images, x or arr_0 (found {sorted(keys)})")
        array = loaded[key]
        label_key = next((k for k in ("labels", "y", "Y") if k in keys), None)
        labels = loaded[label_key] if label_key else None
    else:
        array = loaded
    return from_array(array, labels, str(path))


def from_array(array: np.ndarray, labels: np.ndarray | None, source: str) -> Images:
    """Images from an array [N, H, W], [N, H, W, C] or [N, C, H, W], uint8 or float in [0, 1]."""
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
        raise DataError(
            f"{source}: expected images shaped [N, H, W], [N, H, W, C] or [N, C, H, W] with "
            f"C in (1, 3); found {array.shape}"
        )
    if labels is not None and len(labels) != len(array):
        raise DataError(f"{source}: {len(labels)} labels for {len(array)} images")
    if array.dtype == np.uint8:
        return Images(source=source, arrays=array, labels=labels)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1 or np.isnan(array).any()):
            raise DataError(f"{source}: float images must lie in [0, 1]")
        return Images(source=source, floats=array.astype(np.float32), labels=labels)
    raise DataError(f"{source}: images must be uint8 (0-255) or float (0-1), not {array.dtype}")
