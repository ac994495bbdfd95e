"""Image decoding and preprocessing, defined once for training, evaluation and serving.

Every image, from an upload, a folder or an IDX/npy array, becomes a float32
[C, H, W] array in [0, 1] through `image_to_array` (float arrays: `float_to_input`), so a score computed by
`vigil evaluate` and one computed by the service are the same float.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vigil.core.bundle import InputSpec
from vigil.core.errors import VigilError

# The formats decoded; anything else is `not_an_image`. Pillow reads some forty formats,
# each decoder an attack surface for a hostile upload (EPS even runs Ghostscript where it
# is installed); cameras and image folders need these: PNG, JPEG (and its MPO variant),
# BMP, GIF, TIFF, WebP, and PBM/PGM/PPM.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


class ImageError(VigilError, ValueError):
    """An input that is not a usable image; `code` says how (not_an_image, corrupt_image, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes, refusing decompression bombs before decoding pixels, and
    turn the image upright by its EXIF orientation.

    `Image.open` reads only the header, so the pixel count is checked before `load()`
    allocates anything.
    """
    if not data:
        raise ImageError("empty_file", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    "too_many_pixels",
                    f"the image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}",
                )
            _check_tiles(image, max_pixels)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            "not_an_image",
            f"the file is not an image in a format Vigil reads ({', '.join(FORMATS)})",
        ) from exc
    except MemoryError:
        raise  # not the file's fault alone: a limit failed to hold; answered as a bug (500)
    except Exception as exc:
        # Pillow signals truncated or corrupt data with OSError / SyntaxError / ValueError,
        # but fuzzed files also reach TypeError, struct.error and the like in its format
        # plugins (tests/data/fuzz/): malformed all the same, never a server error.
        raise ImageError("corrupt_image", f"the image could not be decoded: {exc}") from exc
    return _upright(image)


def _check_tiles(image: Image.Image, max_pixels: int) -> None:
    """Refuse a TIFF whose tiles are over the pixel limit, whatever the image's own size.

    libtiff allocates a whole tile to decode it: a 16x16 TIFF of a few hundred bytes that
    declares 32768x32768 tiles took 1 GiB before failing (found by the image fuzzer,
    tests/data/fuzz/). Strips need no check: libtiff bounds them by the image's height.
    """
    tags = getattr(image, "tag_v2", None)
    if tags is None or 322 not in tags:  # TileWidth: a tiled TIFF
        return
    width, height = int(tags.get(322, 0)), int(tags.get(323, 0))  # TileWidth, TileLength
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"the image's tiles are {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}",
        )


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as image viewers do (phone and camera JPEGs carry one).

    Unreadable EXIF is metadata, not pixels: such an image is scored as stored.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, TypeError):
        return image
    return image if orientation == 1 else ImageOps.exif_transpose(image)


def load_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Encoded image bytes as the model's input [C, H, W]; `ImageError` when they are not one."""
    return image_to_array(decode_image(data, max_pixels), spec)


def image_to_array(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Convert to the bundle's colour mode, resize by its policy, scale to [0, 1]: [C, H, W]."""
    try:
        if image.mode != spec.color_mode:
            image = _flatten_alpha(image).convert(spec.color_mode)
        if image.size != (spec.width, spec.height):
            image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as exc:  # modes Pillow cannot convert
        raise ImageError(
            "unsupported_image", f"cannot convert this image to {spec.color_mode}: {exc}"
        ) from exc
    pixels = np.multiply(np.asarray(image), np.float32(1 / 255), dtype=np.float32)
    if pixels.ndim == 2:
        return pixels[None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def array_to_input(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One image of an array file, [H, W] or [H, W, C] (uint8, or float in [0, 1]), as the
    model's input [C, H, W]: uint8 goes through Pillow exactly like a decoded file."""
    if array.dtype == np.uint8:
        return image_to_array(uint8_to_image(array), spec)
    return float_to_input(array, spec)


def float_to_input(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A float image [H, W] or [H, W, C] in [0, 1] as [C, H, W]: channels averaged or
    repeated to the spec's, each resized bilinearly in float (no 8-bit rounding)."""
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if chw.shape[0] != spec.channels:
        chw = chw.mean(axis=0, keepdims=True) if spec.channels == 1 else np.repeat(chw, 3, axis=0)
    if chw.shape[1:] == (spec.height, spec.width):
        return chw
    size = (spec.width, spec.height)
    return np.stack(
        [np.asarray(Image.fromarray(c).resize(size, Image.Resampling.BILINEAR)) for c in chw]
    )


def uint8_to_image(array: np.ndarray) -> Image.Image:
    """An [H, W], [H, W, 1] or [H, W, 3] uint8 array as a Pillow image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images on white, so transparency does not turn black."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale to 8 bits rather than clip. NaN, infinities and
        # negative values (float or signed TIFFs) count as 0: cast to uint8 they would wrap.
        values = np.asarray(image, dtype=np.float64)
        values = np.clip(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
        top = float(values.max()) or 1.0
        return Image.fromarray(np.round(values / top * 255).astype(np.uint8))
    return image
