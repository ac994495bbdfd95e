"""BentoML services for `serve_speed.py`: the bundle's ONNX graph, served the way BentoML's docs show.

Runs in its own environment (`.venv-bentoml`, made by serve_speed.py; never Vigil's
dependencies) and imports nothing of Vigil: it reads the bundle's manifest.json itself.
`VIGIL_BENCH_BUNDLE` names the bundle. Two services, one per server of the benchmark:

  Plain     `@bentoml.api`: each request's images scored in one session call
  Batched   `@bentoml.api(batchable=True)`: BentoML's adaptive batching gathers concurrent
            requests' images (its defaults: max_batch_size 100, max_latency_ms 60000)

Both run one worker without the access log (as Vigil is measured) and take the benchmark's
multipart body (one or more PNGs in the field `files`) and
answer each image's scores: the same preprocessing as Vigil (grayscale, bilinear resize to
the input size, scaled to [0, 1]) and the same graph, without verdicts or p-values.
Started with `bentoml serve benchmarks.bento_service:Plain` (or `:Batched`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort
from PIL import Image

BUNDLE = Path(os.environ.get("VIGIL_BENCH_BUNDLE", "models/default"))
MANIFEST = json.loads((BUNDLE / "manifest.json").read_text())
SPEC = MANIFEST["input"]
SCORES = list(MANIFEST["scores"])


def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    # As Vigil: one intra-op thread less than the CPUs, the rest left to the server.
    options.intra_op_num_threads = max(1, (os.cpu_count() or 1) - 1)
    return ort.InferenceSession(
        str(BUNDLE / MANIFEST["onnx"]["file"]), options, providers=["CPUExecutionProvider"]
    )


def pixels(image: Image.Image) -> np.ndarray:
    size = (SPEC["width"], SPEC["height"])
    image = image.convert(SPEC["color_mode"]).resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def score(model: ort.InferenceSession, images: list[Image.Image]) -> list[dict[str, float]]:
    batch = np.stack([pixels(image) for image in images])
    values = model.run(SCORES, {MANIFEST["onnx"]["input_name"]: batch})
    return [
        {name: float(v[i]) for name, v in zip(SCORES, values, strict=True)}
        for i in range(len(images))
    ]


# One worker, no per-request access log: as Vigil runs in serve_speed.py.
SETTINGS: dict[str, Any] = {"workers": 1, "logging": {"access": {"enabled": False}}}


@bentoml.service(**SETTINGS)
class Plain:
    def __init__(self) -> None:
        self.model = session()

    @bentoml.api
    def score(self, files: list[Image.Image]) -> list[dict[str, float]]:
        return score(self.model, files)


@bentoml.service(**SETTINGS)
class Batched:
    def __init__(self) -> None:
        self.model = session()

    @bentoml.api(batchable=True)
    def score(self, files: list[Image.Image]) -> list[dict[str, float]]:
        return score(self.model, files)
