"""What `vigil score` reads: each INPUT as image files or as an array file, streamed.

An INPUT is a folder (searched recursively for image files, as training does), a glob
(`'scans/**/*.png'`), one image file, an IDX file, a `.npy`/`.npz` file, a text file
listing one path per line (relative paths are relative to the list's folder; blank lines
and lines starting with # are skipped), or, for `--ray` only, an object-storage URI
(`s3://bucket/prefix/`). Files are listed lazily, never all held at once; an array file
is read whole, as its reader does (one image of it per row, named `FILE[index]`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vigil.core.readers import (
    IMAGE_SUFFIXES,
    DataError,
    from_array,
    image_files,
    is_image_file,
    read_array_file,
    read_idx,
)

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Files:
    """Encoded image files: a folder, a glob, a list file, one file, or a URI (Ray only)."""

    given: str
    kind: Literal["folder", "glob", "list", "file", "uri"]

    def paths(self) -> Iterator[str]:
        """Every file, as an absolute path (a URI as given)."""
        if self.kind == "folder":
            yield from (os.path.abspath(p) for p in image_files(Path(self.given)))
        elif self.kind == "glob":
            yield from _glob(self.given)
        elif self.kind == "list":
            yield from _listed(Path(self.given))
        else:
            yield self.given if self.kind == "uri" else os.path.abspath(self.given)

    def count(self) -> int | None:
        """How many files (a second pass over the listing); None for a URI."""
        return None if self.kind == "uri" else sum(1 for _ in self.paths())


@dataclass(frozen=True)
class Arrays:
    """An IDX or .npy/.npz file: uint8 [N, H, W(, C)] or float images in [0, 1]."""

    given: str

    def load(self) -> np.ndarray:
        path = Path(self.given)
        images = (
            read_array_file(path)
            if path.suffix in (".npy", ".npz")
            else from_array(read_idx(path), None, self.given)
        )
        array = images.arrays if images.arrays is not None else images.floats
        assert array is not None
        return array

    def name(self, index: int) -> str:
        return f"{os.path.abspath(self.given)}[{index}]"

    def count(self) -> int:
        return len(self.load())


Source = Files | Arrays


def resolve(inputs: list[str]) -> list[Source]:
    """Each INPUT as a source; `DataError` naming one that does not exist or has no images."""
    if not inputs:
        raise DataError("no INPUT given: name folders, globs, image, IDX, .npy/.npz or list files")
    return [_source(given) for given in inputs]


def _source(given: str) -> Source:
    path = Path(given)
    if URI.match(given):
        return Files(given, "uri")
    if not path.exists():
        if GLOB.search(given):
            return Files(given, "glob")
        raise DataError(f"{given}: no such file or folder")
    if path.is_dir():
        return Files(given, "folder")
    if path.suffix in (".npy", ".npz") or "idx" in path.name:
        return Arrays(given)
    if is_image_file(path.name):
        return Files(given, "file")
    return Files(given, "list")


def count(sources: list[Source]) -> int | None:
    """Inputs in all; `DataError` when there are none. None when a URI is among them."""
    counts = [(source, source.count()) for source in sources]
    for source, n in counts:
        if n == 0:
            raise DataError(f"{source.given}: {_nothing(source)}")
    known = [n for _, n in counts]
    return None if None in known else sum(n for n in known if n is not None)


def _nothing(source: Source) -> str:
    if isinstance(source, Arrays):
        return "the array holds no images"
    if source.kind == "folder":
        return f"no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)"
    if source.kind == "glob":
        return "no file matches this pattern"
    return "the list names no file"


def _glob(pattern: str) -> Iterator[str]:
    # Sorted for a reproducible order; a glob names fewer files than a folder tree.
    matches = sorted(glob.glob(pattern, recursive=True))
    yield from (os.path.abspath(p) for p in matches if os.path.isfile(p))


def _listed(path: Path) -> Iterator[str]:
    base = path.parent
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                yield entry if URI.match(entry) else os.path.abspath(base / entry)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable list of paths: {exc}") from exc
