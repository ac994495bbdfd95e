"""Write a model bundle: export the graphs, calibrate on held-out normals, write the manifest."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from vigil.core.bundle import (
    DECODER_FILE,
    MODEL_FILE,
    Calibration,
    InputSpec,
    Manifest,
    ModelInfo,
    OnnxInfo,
    Tiling,
    TrainingInfo,
    now,
    sha256_file,
    write_manifest,
)
from vigil.core.runtime import create_session, run_batched
from vigil.core.score_names import PRIMARY, SCORES
from vigil.core.tiling import score_frames
from vigil.training.calibrate import make_calibration
from vigil.training.export import OPSET, export_decoder, export_onnx
from vigil.training.models import count_parameters
from vigil.training.scores import ScoreGraph


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_bundle(
    folder: Path,
    graph: ScoreGraph,
    spec: InputSpec,
    calibration_images: np.ndarray,
    training: dict[str, Any],
    target_fpr: float,
    name: str,
    tiling: Tiling | None = None,
    requested_target_fpr: float | None = None,
    note: str | None = None,
    verdict: Sequence[str] = (PRIMARY,),
) -> Manifest:
    """Export, calibrate and write a complete bundle into the empty `folder` (a staging
    folder: `core.publish.staged` puts it in place once everything is written).

    With `tiling`, `calibration_images` are whole frames, each scored by its tiles (the
    max over tiles), so the calibrated FPR is per image. `verdict`: the scores whose union
    decides the verdict, each calibrated at an equal share of `target_fpr`.
    """
    cfg = graph.model.cfg
    outputs = export_onnx(graph, folder / MODEL_FILE)
    if cfg.variational:
        export_decoder(graph.model, folder / DECODER_FILE)
    scores = graph.score_names()
    # Calibrate on the exported graph itself: the scores the service will compute.
    session = create_session(folder / MODEL_FILE, providers=["CPUExecutionProvider"])
    if tiling is None:
        raw = run_batched(session, calibration_images, outputs=scores)
    else:
        raw = score_frames(session, calibration_images, tiling, spec, scores)
    source = f"{training['data_source']} (calibration split)"
    calibration = make_calibration(raw, scores, list(verdict), target_fpr, source)
    if note:
        calibration = calibration.model_copy(
            update={"requested_target_fpr": requested_target_fpr, "note": note}
        )
    manifest = _manifest(graph, spec, outputs, calibration, folder, training, name)
    manifest = manifest.model_copy(update={"tiling": tiling})
    write_manifest(folder, manifest)
    return manifest


def _manifest(
    graph: ScoreGraph,
    spec: InputSpec,
    outputs: list[str],
    calibration: Calibration,
    staging: Path,
    training: dict[str, Any],
    name: str,
) -> Manifest:
    cfg = graph.model.cfg
    scores = list(calibration.scores)
    return Manifest(
        name=name,
        version=1,
        created_at=now(),
        model=ModelInfo(
            kind=cfg.kind,
            latent_dim=cfg.latent_dim,
            beta=cfg.beta if cfg.variational else None,
            loss=training["config"]["loss"],
            denoise=training["config"]["denoise"],
            parameters=count_parameters(graph.model),
        ),
        input=spec,
        onnx=OnnxInfo(sha256=sha256_file(staging / MODEL_FILE), opset=OPSET, outputs=outputs),
        scores=scores,
        primary_score=PRIMARY,
        score_descriptions={
            **{s: SCORES[s] for s in scores},
            PRIMARY: graph.describe_overall(),
        },
        calibration=calibration,
        training=TrainingInfo(**training, versions=versions()),
    )
