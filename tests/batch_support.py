"""Shared helpers for the `vigil score` tests (no tests here): input folders, results and
the service's answers for the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from test_service_support import encode, files, make_settings, serving, tshirt

from vigil.cli import main
from vigil.training.data import read_images

# Files the service refuses, with the code it answers (max_image_pixels = PIXELS).
PIXELS = 40_000
BAD = {
    "notes.png": ("not_an_image", b"these are not pixels"),
    "empty.png": ("empty_file", b""),
    "big.png": ("too_many_pixels", encode(np.zeros((250, 250), np.uint8))),
}


def fashion(count: int, start: int = 0) -> np.ndarray:
    """Fashion-MNIST test images of every class, uint8 [count, 28, 28]."""
    arrays = read_images("fashion-mnist", "test").arrays
    assert arrays is not None
    return np.ascontiguousarray(arrays[start : start + count])


def image_folder(root: Path, count: int = 24) -> Path:
    """`count` good images (PNG, a JPEG, an RGB one, other sizes; in a subfolder too) and the
    BAD files (a truncated PNG among them)."""
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(fashion(count)):
        where = folder / "sub" if i % 3 == 0 else folder
        (where / f"{i:03d}.png").write_bytes(encode(image))
    (folder / "jpeg.jpg").write_bytes(encode(tshirt(1), "JPEG", quality=90))
    rgb = np.stack([tshirt(2), tshirt(3), tshirt(4)], axis=-1)
    (folder / "sub" / "rgb.png").write_bytes(encode(rgb))
    (folder / "large.png").write_bytes(encode(np.kron(tshirt(5), np.ones((3, 3), np.uint8))))
    for name, (_, data) in BAD.items():
        (folder / name).write_bytes(data)
    (folder / "cut.png").write_bytes(encode(tshirt(6))[:60])
    (folder / "readme.txt").write_text("not an image suffix: not listed")
    return folder


def rows(path: Path) -> dict[str, dict[str, Any]]:
    """A results file or folder as {path: row}."""
    return {row["path"]: row for row in pq.read_table(path).to_pylist()}


def metadata(path: Path) -> dict[str, Any]:
    """The `vigil` key of a results file's (or of a results folder's first file's) schema."""
    first = path if path.is_file() else sorted(path.glob("*.parquet"))[0]
    meta = pq.read_schema(first).metadata
    return dict(json.loads(meta[b"vigil"]))


async def service_answers(
    bundle: Path, paths: list[str], target_fpr: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST /score for each file alone: {path: result or error code}, and the model ref."""
    answers: dict[str, Any] = {}
    model: dict[str, Any] = {}
    query = "" if target_fpr is None else f"?target_fpr={target_fpr}"
    async with serving(make_settings(bundle, max_image_pixels=PIXELS)) as (_, client):
        for path in paths:
            body = files((Path(path).name, Path(path).read_bytes()))
            response = await client.post(f"/score{query}", files=body)
            if response.status_code == 200:
                answers[path] = response.json()["results"][0]
                model = response.json()["model"]
            else:
                answers[path] = response.json()["error"]["code"]
    return answers, model


def assert_same_as_service(row: dict[str, Any], answer: Any, primary: str) -> None:
    """A result row holds exactly (==, not approximately) what POST /score answered."""
    if isinstance(answer, str):
        assert row["error"] == answer, row
        assert row["score"] is None and row["is_anomaly"] is None
        return
    assert row["error"] is None
    assert row["score"] == answer["score"]
    assert row["is_anomaly"] == answer["is_anomaly"]
    assert row["flagged_by"] == answer["flagged_by"]
    assert row["p_value"] == answer["p_values"][primary]
    for name, value in answer["scores"].items():
        assert row.get(name) == value, name


def score(bundle: Path, out: Path, *inputs: object, extra: tuple[str, ...] = ()) -> int:
    """`vigil score` as a user runs it, with the tests' pixel limit and no progress bar."""
    argv = ["score", "--bundle", str(bundle), "--out", str(out), *map(str, inputs)]
    return main([*argv, "--max-image-pixels", str(PIXELS), "--no-progress", *extra])
