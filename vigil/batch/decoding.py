"""Files and array images to model inputs, with the service's preprocessing and error codes.

Light on purpose (numpy, Pillow, the core): local decode workers import only this.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigil.core.bundle import InputSpec
from vigil.core.preprocess import ImageError, array_to_input, load_image

# Not a service code: the service is handed bytes, a batch job has to read them first.
READ_ERROR = "unreadable_file"
INTERNAL_ERROR = "internal_error"


@dataclass
class Decoded:
    """Inputs of one batch: every path, the model inputs of those that decoded, and the
    error code of those that did not (None where it decoded)."""

    paths: list[str]
    inputs: np.ndarray  # [k, C, H, W] float32, k = number of None in `errors`
    errors: list[str | None]

    @staticmethod
    def concat(parts: Sequence[Decoded]) -> Decoded:
        return Decoded(
            [p for part in parts for p in part.paths],
            np.concatenate([part.inputs for part in parts]),
            [e for part in parts for e in part.errors],
        )


def decode(
    paths: Sequence[str],
    items: Sequence[bytes | np.ndarray | None],
    spec: InputSpec,
    max_pixels: int,
) -> Decoded:
    """Encoded files (bytes; None for one that could not be read) or array images, as inputs."""
    arrays: list[np.ndarray] = []
    errors: list[str | None] = []
    for item in items:
        try:
            if item is None:
                raise ImageError(READ_ERROR, "the file could not be read")
            if isinstance(item, np.ndarray):
                arrays.append(array_to_input(item, spec))
            else:
                arrays.append(load_image(item, spec, max_pixels))
            errors.append(None)
        except ImageError as exc:
            errors.append(exc.code)
        except Exception:  # a decoder bug: the service answers 500 internal_error; go on
            errors.append(INTERNAL_ERROR)
    shape = (0, spec.channels, spec.height, spec.width)
    inputs = np.stack(arrays) if arrays else np.empty(shape, np.float32)
    return Decoded(list(paths), inputs, errors)


def read_files(paths: Sequence[str]) -> list[bytes | None]:
    """Each file's bytes, or None for one that cannot be read."""
    out: list[bytes | None] = []
    for path in paths:
        try:
            out.append(Path(path).read_bytes())
        except OSError:
            out.append(None)
    return out


# A decode worker's settings, set once per process by `init_worker`.
_worker: dict[str, object] = {}


def configure(spec_json: str, max_pixels: int) -> None:
    _worker["spec"] = InputSpec.model_validate_json(spec_json)
    _worker["max_pixels"] = max_pixels


def init_worker(spec_json: str, max_pixels: int, parent: int) -> None:
    """A decode process's initializer: settings, Ctrl-C left to the main process, and an
    exit when the main process is gone (killed outright, it cannot stop its workers)."""
    configure(spec_json, max_pixels)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    # `parent` comes from the main process: it may be gone before this worker has started.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def decode_files(paths: list[str]) -> Decoded:
    spec, max_pixels = _worker["spec"], _worker["max_pixels"]
    assert isinstance(spec, InputSpec) and isinstance(max_pixels, int)
    return decode(paths, read_files(paths), spec, max_pixels)


def decode_arrays(names: list[str], arrays: np.ndarray) -> Decoded:
    spec, max_pixels = _worker["spec"], _worker["max_pixels"]
    assert isinstance(spec, InputSpec) and isinstance(max_pixels, int)
    return decode(names, list(arrays), spec, max_pixels)
