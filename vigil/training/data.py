"""Training data: `--data` sources (Fashion-MNIST, IDX, image folders, .npy/.npz) and splits.

The file readers themselves are `core.readers` (batch scoring reads the same formats);
whatever the source, images reach the model through `core.preprocess`, the same code the
service uses on uploads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vigil.core.bundle import InputSpec
from vigil.core.preprocess import ImageError, array_to_input, decode_image, image_to_array
from vigil.core.readers import (
    IMAGE_SUFFIXES,
    DataError,
    Images,
    image_files,
    read_array_file,
    read_idx,
)

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
MAX_PIXELS = 64_000_000


# ---------------------------------------------------------------- readers


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
    files = tuple(sorted(image_files(folder)))
    if not files:
        raise DataError(
            f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return Images(source=str(folder), files=files)


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
        first = open_image(images.files[0])
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
    arrays = images.arrays if images.arrays is not None else images.floats
    if arrays is not None:
        for i, array in enumerate(arrays):
            out[i] = array_to_input(array, spec)
    else:
        for i, path in enumerate(images.files):
            out[i] = image_to_array(open_image(path), spec)
    return out


def open_image(path: Path) -> Image.Image:
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
