"""Coverage-guided fuzzing of image decoding and preprocessing with atheris (libFuzzer).

The target is `image_contract.check`: `core.preprocess`, what /score, `vigil score` and
training run on every file. A finding is a `Finding` or any stray exception (libFuzzer
stops and writes the input as crash-*), an input that runs past `-timeout` (a hang,
timeout-*) or takes the process past `-rss_limit_mb` (an allocation far beyond the pixel
limit, oom-*). Pillow's Python code and Vigil's are instrumented for coverage; Pillow's C
decoders (libpng, libjpeg, libtiff, libwebp) are exercised but not instrumented.

    python -m benchmarks.reliability.image_fuzz [libFuzzer flags] CORPUS_DIR [SEED_DIR...]
    python -m benchmarks.reliability.image_fuzz --seeds DIR   # write the seed images

An input that found a bug goes into tests/data/fuzz/, which the test suite replays.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL", "vigil", "benchmarks"]):
    from PIL import Image

    Image.init()  # imports every format plugin now, so that they are instrumented too
    from benchmarks.reliability.image_contract import check, seeds


def main() -> None:
    if sys.argv[1:2] == ["--seeds"]:
        for path in seeds(Path(sys.argv[2])):
            print(path)
        return
    # Pillow warns about every odd EXIF block it skips; thousands of runs a second.
    warnings.simplefilter("ignore", UserWarning)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
