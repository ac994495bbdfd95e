"""What decoding an uploaded file may do, as the image fuzzer and its regression corpus check it.

`check(data)` runs `core.preprocess` (`decode_image`, then `load_image`) on `data` into a
grayscale and an RGB input spec, at a pixel limit far below the service's (so that an
allocation beyond it shows in the fuzzer's RSS limit). It raises `Finding` (or lets the
stray exception through) when the decode path does anything its contract does not allow:
an exception other than an `ImageError` with a documented code, an image over the pixel
limit, an array that is not the spec's shape, float32, finite and in [0, 1].
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vigil.core.bundle import InputSpec
from vigil.core.preprocess import ImageError, decode_image, load_image

MAX_PIXELS = 1_000_000
DOCUMENTED = frozenset(
    {"not_an_image", "corrupt_image", "empty_file", "too_many_pixels", "unsupported_image"}
)
SPECS = (
    InputSpec(channels=1, height=28, width=28, color_mode="L"),
    InputSpec(channels=3, height=32, width=32, color_mode="RGB"),
)
CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "fuzz"


class Finding(AssertionError):
    """The decode path did something its contract does not allow."""


def fuzzer_command(*args: str) -> list[str]:
    """The image fuzzer's command line (`args`: libFuzzer flags and corpus folders), started
    by a shell that forks it. Linux carries a process's peak RSS over to a child it execs
    (getrusage's ru_maxrss, which libFuzzer's -rss_limit_mb reads), so a fuzzer started
    straight from a large process (pytest, after tests that trained models) reports an
    out-of-memory on its first check; the shell's child starts from the shell's few MiB."""
    return forked([sys.executable, "-m", "benchmarks.reliability.image_fuzz", *args])


def forked(command: list[str]) -> list[str]:
    """`command`, run as the child of a shell (which does not exec it in its own place)."""
    return ["sh", "-c", '"$@"; exit $?', "sh", *command]


def check(data: bytes) -> None:
    try:
        image = decode_image(data, MAX_PIXELS)
    except ImageError as exc:
        if exc.code not in DOCUMENTED:
            raise Finding(f"undocumented image error code {exc.code!r}") from exc
        return
    if image.width * image.height > MAX_PIXELS:
        raise Finding(f"decoded {image.width}x{image.height}, over the {MAX_PIXELS}-pixel limit")
    for spec in SPECS:
        try:
            array = load_image(data, spec, MAX_PIXELS)
        except ImageError as exc:
            if exc.code not in DOCUMENTED:
                raise Finding(f"undocumented image error code {exc.code!r}") from exc
            continue
        shape = (spec.channels, spec.height, spec.width)
        if array.shape != shape or array.dtype != np.float32:
            raise Finding(f"array {array.shape} {array.dtype}, not {shape} float32")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise Finding("pixel values outside [0, 1]")


def seeds(folder: Path) -> list[Path]:
    """Small valid images of every kind the decoder meets (and two it refuses)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    frames = [Image.fromarray(np.roll(gray, i)) for i in range(3)]
    images = {
        "gray.png": (Image.fromarray(gray), "PNG", {}),
        "rgba.png": (Image.fromarray(np.dstack([rgb, gray])), "PNG", {}),
        "deep.png": (Image.fromarray(gray.astype(np.uint16) * 257), "PNG", {}),
        "palette.png": (Image.fromarray(rgb).convert("P"), "PNG", {"transparency": 0}),
        "photo.jpg": (Image.fromarray(rgb), "JPEG", {"quality": 80}),
        "gray.jpg": (Image.fromarray(gray), "JPEG", {}),
        "rotated.jpg": (Image.fromarray(rgb), "JPEG", {"exif": exif.tobytes()}),
        "pic.bmp": (Image.fromarray(rgb), "BMP", {}),
        "anim.gif": (frames[0], "GIF", {"save_all": True, "append_images": frames[1:]}),
        "pic.tiff": (Image.fromarray(rgb), "TIFF", {"compression": "tiff_lzw"}),
        "pages.tiff": (frames[0], "TIFF", {"save_all": True, "append_images": frames[1:]}),
        "float.tiff": (Image.fromarray(gray.astype(np.float32)), "TIFF", {}),
        "pic.webp": (Image.fromarray(rgb), "WEBP", {"lossless": True}),
        "pic.ppm": (Image.fromarray(rgb), "PPM", {}),
        "pic.pgm": (Image.fromarray(gray), "PPM", {}),
        "refused.ico": (Image.fromarray(rgb), "ICO", {}),
        "refused.tga": (Image.fromarray(rgb), "TGA", {}),
    }
    paths = []
    for name, (image, fmt, params) in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **params)
        paths.append(folder / name)
        paths[-1].write_bytes(buffer.getvalue())
    return paths
