import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import make_blobs
from PIL import Image

from vigil.core.bundle import InputSpec
from vigil.training.data import (
    DataError,
    infer_spec,
    read_idx,
    read_images,
    split_indices,
    to_inputs,
)


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_idx_round_trip_raw_and_gzip(tmp_path: Path, name: str) -> None:
    images = make_blobs(7, size=12)
    labels = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / name.replace("images-idx3", "labels-idx1"), labels)
    assert np.array_equal(read_idx(tmp_path / name), images)
    data = read_images(str(tmp_path), "train")
    assert np.array_equal(data.arrays, images)
    assert np.array_equal(data.labels, labels)


def test_idx_bad_magic_and_truncation_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad)
    short = write_idx(tmp_path / "y-images-idx3-ubyte", make_blobs(3, size=8))
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(DataError, match=str(short)):
        read_idx(short)


def test_fashion_mnist_reader_and_class_selection() -> None:
    train = read_images("fashion-mnist", "train")
    assert train.arrays is not None and train.arrays.shape == (60000, 28, 28)
    shirts = train.of_class(6)
    assert len(shirts) == 6000 and set(np.unique(shirts.labels)) == {6}
    others = read_images("fashion-mnist", "test").of_class(6, keep=False)
    assert len(others) == 9000


def test_folder_of_rgb_pngs_of_any_size_is_resized(tmp_path: Path) -> None:
    for i, size in enumerate([(40, 30), (64, 64), (20, 50)]):
        Image.new("RGB", size, (200, 10 * i, 30)).save(tmp_path / f"{i}.png")
    Image.new("L", (10, 10), 90).save(tmp_path / "gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    data = read_images(str(tmp_path))
    assert len(data) == 4
    spec = InputSpec(channels=3, height=32, width=24, color_mode="RGB")
    x = to_inputs(data, spec)
    assert x.shape == (4, 3, 32, 24) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.allclose(x[0, 0], 200 / 255, atol=1e-6)


def test_npy_npz_layouts_and_float_arrays(tmp_path: Path) -> None:
    blobs = make_blobs(5, size=16)
    np.save(tmp_path / "a.npy", blobs)
    np.savez(tmp_path / "b.npz", x=blobs[:, None], y=np.arange(5))  # NCHW with labels
    np.save(tmp_path / "c.npy", blobs.astype(np.float32) / 255)
    spec = InputSpec(channels=1, height=16, width=16, color_mode="L")
    a = to_inputs(read_images(str(tmp_path / "a.npy")), spec)
    b = read_images(str(tmp_path / "b.npz"))
    c = to_inputs(read_images(str(tmp_path / "c.npy")), spec)
    assert np.array_equal(a, to_inputs(b, spec))
    assert np.array_equal(b.labels, np.arange(5))
    assert np.allclose(a, c, atol=1e-6)


def test_infer_spec_from_data() -> None:
    rgb = read_images("fashion-mnist").select(np.arange(3))
    assert infer_spec(rgb, None, None) == InputSpec(channels=1, height=28, width=28, color_mode="L")
    assert infer_spec(rgb, (64, 48), "RGB").channels == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
        (lambda p: np.save(p / "w.npy", np.zeros((3, 5))) or p / "w.npy", "expected images shaped"),
        (lambda p: np.save(p / "f.npy", np.full((2, 4, 4), 3.0)) or p / "f.npy", r"\[0, 1\]"),
        (lambda p: (p / "x.csv").write_text("1,2") and p / "x.csv", "unknown data format"),
    ],
)
def test_bad_data_stops_with_a_clear_message(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=message):
        read_images(str(make(tmp_path)))


def test_corrupt_image_in_folder_is_named(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = read_images(str(tmp_path))
    spec = InputSpec(channels=1, height=8, width=8, color_mode="L")
    with pytest.raises(DataError, match=r"broken\.png"):
        to_inputs(data, spec)


def test_unlabelled_data_cannot_select_a_class(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", make_blobs(4))
    with pytest.raises(DataError, match="no labels"):
        read_images(str(tmp_path / "a.npy")).of_class(1)


def test_split_is_deterministic_disjoint_and_complete() -> None:
    a = split_indices(1000, seed=3, val_fraction=0.1, cal_fraction=0.2)
    b = split_indices(1000, seed=3, val_fraction=0.1, cal_fraction=0.2)
    c = split_indices(1000, seed=4, val_fraction=0.1, cal_fraction=0.2)
    assert all(
        np.array_equal(x, y) for x, y in zip(a.__dict__.values(), b.__dict__.values(), strict=True)
    )
    assert not np.array_equal(a.cal, c.cal)
    joined = np.concatenate([a.train, a.val, a.cal])
    assert len(np.unique(joined)) == 1000
    assert a.sizes() == {"train": 700, "val": 100, "calibration": 200}
    with pytest.raises(DataError, match="too few"):
        split_indices(2, seed=0, val_fraction=0.1, cal_fraction=0.2)
