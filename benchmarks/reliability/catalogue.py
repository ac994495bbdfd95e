"""The kinds of request the checks send, each with the answer it must get.

Good requests carry real Fashion-MNIST test images of every class (so some are flagged);
bad ones cover every way a client can get a request wrong that the error table lists.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from benchmarks.reliability.client import request

BOUNDARY = "reliabilityboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Kind:
    name: str
    raw: bytes  # the whole request
    status: int  # the status its answer must have
    code: str | None = None  # the error code, for an error
    route: str = "/score"  # its label in vigil_requests_total
    method: str = "POST"
    good: bool = False  # a scoring request that must be answered 200
    weight: float = 1.0  # its share of a mixed load (relative)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def form(files: list[tuple[str, bytes]], field: str = "files", close: bool = True) -> bytes:
    """A multipart body: each (filename, data) a part of `field`."""
    parts = []
    for name, data in files:
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n')  # fmt: skip
        parts.append(head.encode() + data + b"\r\n")
    end = f"--{BOUNDARY}--\r\n".encode() if close else b""
    return b"".join(parts) + end


def score(body: bytes, query: str = "", content_type: str = MULTIPART, **headers: str) -> bytes:
    path = "/score" + (f"?{query}" if query else "")
    return request("POST", path, body, {"Content-Type": content_type, **headers})


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of zeros that declares side x side pixels; a few tens of KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" * (1 + (side + 7) // 8)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * side, 9)) + chunk(b"IEND", b""))  # fmt: skip


def good_kinds(images: list[np.ndarray]) -> list[Kind]:
    """Scoring requests that must succeed: one image (most of the load), four, a raw body,
    another target FPR, heatmaps."""
    pngs = [png(image) for image in images]
    kinds = [
        Kind(f"1 image #{i}", score(form([(f"{i}.png", data)])), 200, good=True, weight=60 / len(pngs))
        for i, data in enumerate(pngs)
    ]  # fmt: skip
    four = form([(f"{i}.png", data) for i, data in enumerate(pngs[:4])])
    kinds += [
        Kind("4 images", score(four), 200, good=True, weight=5),
        Kind("raw body", score(pngs[1], content_type="image/png"), 200, good=True, weight=5),
        Kind("target_fpr=0.05", score(form([("a.png", pngs[2])]), "target_fpr=0.05"), 200,
             good=True, weight=3),
        Kind("heatmap", score(form([("a.png", pngs[3])]), "heatmap=true"), 200, good=True, weight=2),
        Kind("GET /healthz", request("GET", "/healthz"), 200, route="/healthz", method="GET", weight=1),
        Kind("GET /model", request("GET", "/model"), 200, route="/model", method="GET", weight=1),
    ]  # fmt: skip
    return kinds


def bad_kinds(good: bytes, max_files: int, max_body_bytes: int) -> list[Kind]:
    """Requests that must each get one 4xx with its error code, and never reach the model."""
    lie = {"Content-Length": str(max_body_bytes + 1), "Connection": "close"}
    no_end = form([("a.png", good)], close=False)
    return [
        Kind("not an image", score(form([("a.txt", b"hello, I am text\n" * 20)])), 415, "not_an_image"),
        Kind("truncated PNG", score(form([("a.png", good[: len(good) // 2])])), 422, "corrupt_image"),
        Kind("empty file", score(form([("a.png", b"")])), 422, "empty_file"),
        Kind("decompression bomb", score(form([("bomb.png", bomb_png())])), 413, "too_many_pixels"),
        Kind("too many files", score(form([(f"{i}.png", b"x") for i in range(max_files + 1)])),
             413, "too_many_files"),
        Kind("no files", score(f"--{BOUNDARY}--\r\n".encode()), 422, "no_files"),
        Kind("wrong field", score(form([("a.png", good)], field="file")), 422, "no_files"),
        Kind("text body", score(b"hello", content_type="text/plain"), 415, "unsupported_media_type"),
        Kind("target_fpr=2", score(form([("a.png", good)]), "target_fpr=2"), 422, "invalid_target_fpr"),
        Kind("heatmap=maybe", score(form([("a.png", good)]), "heatmap=maybe"), 422, "invalid_request"),
        Kind("no closing boundary", score(no_end), 400, "invalid_multipart"),
        Kind("Content-Length over the limit", request("POST", "/score", b"", {"Content-Type": "image/png", **lie}),
             413, "body_too_large"),
        Kind("unknown route", request("GET", "/nope"), 404, "not_found", route="unmatched", method="GET"),
        Kind("GET /score", request("GET", "/score"), 405, "method_not_allowed", method="GET"),
    ]  # fmt: skip


def mixed(
    images: list[np.ndarray], max_files: int, max_body_bytes: int, bad_share: float
) -> list[Kind]:
    """Good and bad kinds with weights such that bad requests are `bad_share` of the load."""
    good = good_kinds(images)
    bad = bad_kinds(png(images[0]), max_files, max_body_bytes)
    good_total = sum(k.weight for k in good)
    scale = bad_share / (1 - bad_share) * good_total / len(bad)
    return good + [Kind(**{**k.__dict__, "weight": scale}) for k in bad]


def test_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` Fashion-MNIST test images of every class (uint8 28x28), chosen by `seed`."""
    from vigil.training.data import read_images  # torch-free: the IDX reader

    arrays = read_images("fashion-mnist", "test").arrays
    assert arrays is not None
    rng = np.random.default_rng(seed)
    return [np.ascontiguousarray(arrays[i]) for i in rng.choice(len(arrays), count, replace=False)]
