"""Baseline: FastAPI + torch eager per request, the way a first service is usually written.

Same architecture as the bundle (weights random: speed does not depend on them), same
preprocessing, one forward pass per request in FastAPI's thread pool, no batching.
Set VIGIL_BUNDLE to the bundle whose architecture to copy.
"""

import os
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, UploadFile

from vigil.core.bundle import read_manifest
from vigil.core.preprocess import decode_image, image_to_array
from vigil.training.models import AutoEncoder, ModelConfig
from vigil.training.scores import ScoreGraph

manifest = read_manifest(Path(os.environ["VIGIL_BUNDLE"]))
spec = manifest.input
cfg = ModelConfig(
    kind=manifest.model.kind, channels=spec.channels, height=spec.height, width=spec.width,
    latent_dim=manifest.model.latent_dim, base_width=manifest.training.config.get("base_width", 32),
)  # fmt: skip
graph = ScoreGraph(AutoEncoder(cfg)).eval()
torch.set_num_threads(1)
app = FastAPI()


@app.post("/score")
def score(files: list[UploadFile]) -> dict[str, list[dict[str, float]]]:
    batch = np.stack([image_to_array(decode_image(f.file.read(), 10**8), spec) for f in files])
    with torch.no_grad():
        out = graph(torch.from_numpy(batch))
    names = graph.score_names()
    return {"results": [{n: float(out[n][i]) for n in names} for i in range(len(files))]}
