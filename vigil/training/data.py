"""Readers for normal (and anomalous) images: IDX files, image folders, .npy/.npz arrays.

Whatever the source, images reach the model through `service.preprocess.image_to_array`,
the same function the service uses on uploads.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vigil.core.bundle import InputSpec
from vigil.core.errors import VigilError
from vigil.core.preprocess import ImageError, decode_image, image_to_array, uint8_to_image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_PIXELS = 64_000_000


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


# ---------------------------------------------------------------- readers


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


def _idx_pair(images_path: Path) -> Images:
    images = read_idx(images_path)
    if images.ndim not in (3, 4):
        raise DataError(f"{images_path}: expected images [N, H, W], found shape {images.shape}")
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    labels = read_idx(labels_path) if labels_path.exists() and labels_path != images_path else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
    return Images(source=str(images_path), arrays=images, labels=labels)


def _find_idx(folder: Path, split: str) -> Path | None:
    prefix = "train" if split == "train" else "t10k"
    for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"):
        if (folder / name).exists():
            return folder / name
    return None


def read_folder(folder: Path) -> Images:
    files = tuple(
        sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise DataError(
            f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return Images(source=str(folder), files=files)


def read_array_file(path: Path) -> Images:
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
    return _from_array(array, labels, str(path))


def _from_array(array: np.ndarray, labels: np.ndarray | None, source: str) -> Images:
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


def read_images(data: str, split: str = "train") -> Images:
    """Read `data`: 'fashion-mnist', an IDX file or folder, an image folder, or .npy/.npz."""
    path = FASHION_MNIST_DIR if data == "fashion-mnist" else Path(data)
    if data == "fashion-mnist" and not path.exists():
        raise DataError(
            f"Fashion-MNIST is not installed at {path}: "
            "run `sudo apt-get install dataset-fashion-mnist` (or `make data`)"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        idx = _find_idx(path, split)
        return _idx_pair(idx) if idx else read_folder(path)
    if path.suffix in (".npy", ".npz"):
        return read_array_file(path)
    if "idx" in path.name:
        return _idx_pair(path)
    raise DataError(f"{path}: unknown data format (use an IDX file, .npy/.npz or a folder)")


# ---------------------------------------------------------------- to model inputs


def infer_spec(images: Images, size: tuple[int, int] | None, color_mode: str | None) -> InputSpec:
    """The input spec a model for these images should have."""
    if images.arrays is not None or images.floats is not None:
        sample = images.arrays if images.arrays is not None else images.floats
        assert sample is not None
        natural = (int(sample.shape[1]), int(sample.shape[2]))
        mode = color_mode or ("RGB" if sample.ndim == 4 and sample.shape[-1] == 3 else "L")
    else:
        first = _open(images.files[0])
        natural = (min(first.height, 64), min(first.width, 64))
        mode = color_mode or ("L" if first.mode in ("L", "LA", "1", "I", "I;16", "F") else "RGB")
    height, width = size or natural
    return InputSpec(
        channels=1 if mode == "L" else 3,
        height=height,
        width=width,
        color_mode=mode,  # type: ignore[arg-type]
    )


def to_inputs(images: Images, spec: InputSpec) -> np.ndarray:
    """All images as one float32 batch [N, C, H, W] in [0, 1]."""
    out = np.empty((len(images), spec.channels, spec.height, spec.width), dtype=np.float32)
    if images.arrays is not None:
        for i, array in enumerate(images.arrays):
            out[i] = image_to_array(uint8_to_image(array), spec)
    elif images.floats is not None:
        for i, array in enumerate(images.floats):
            out[i] = _float_to_input(array, spec)
    else:
        for i, path in enumerate(images.files):
            out[i] = image_to_array(_open(path), spec)
    return out


def _float_to_input(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if chw.shape[0] != spec.channels:
        chw = chw.mean(axis=0, keepdims=True) if spec.channels == 1 else np.repeat(chw, 3, axis=0)
    if chw.shape[1:] == (spec.height, spec.width):
        return chw
    size = (spec.width, spec.height)
    return np.stack(
        [np.asarray(Image.fromarray(c).resize(size, Image.Resampling.BILINEAR)) for c in chw]
    )


def _open(path: Path) -> Image.Image:
    try:
        return decode_image(path.read_bytes(), MAX_PIXELS)
    except ImageError as exc:
        raise DataError(f"{path}: {exc.message}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


# ---------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    cal: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "calibration": len(self.cal)}


def split_indices(n: int, seed: int, val_fraction: float, cal_fraction: float) -> Splits:
    """Deterministic train / validation / calibration split of n normal images."""
    n_val = max(1, round(n * val_fraction))
    n_cal = max(1, round(n * cal_fraction))
    if n - n_val - n_cal < 1:
        raise DataError(
            f"{n} normal images are too few to split into train, validation and calibration"
        )
    order = np.random.default_rng(seed).permutation(n)
    return Splits(
        train=np.sort(order[n_val + n_cal :]),
        val=np.sort(order[:n_val]),
        cal=np.sort(order[n_val : n_val + n_cal]),
    )
