"""Scoring a batch of inputs into result rows: the code both `vigil score` paths run.

Decoding is `core.preprocess` (the service's `load_image` for encoded files), the graph
is the bundle's ONNX graph through `core.runtime`, verdicts are `core.verdicts.Judge.judge`,
as in POST /score: a file's row holds the floats the service answers for it.

One row per input, in input order: `path`, `is_anomaly`, `score` (the primary score), one
column per score, `flagged_by`, `p_value` (the primary score's), `error` (null, or the
error code the service would answer for that file; `unreadable_file` when the file
could not even be read). A row with an error has nulls in the other columns.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from vigil.batch.decoding import Decoded
from vigil.core.bundle import BundleError, Manifest, load_bundle, sha256_file
from vigil.core.errors import VigilError
from vigil.core.runtime import check_graph, create_session, run
from vigil.core.tiling import count, score_frames
from vigil.core.verdicts import Judge

# ONNX Runtime failed on the batch (the service's code): its rows carry it, the job goes on.
INFERENCE_ERROR = "inference_failed"
METADATA_KEY = b"vigil"
# Rows per scoring call (a local group, a Ray batch): judged and turned into a table at once.
GROUP = 1024
GROUP_FLOATS = 1 << 24  # at most this many input floats decoded at once (64 MB)

log = logging.getLogger("vigil.batch")


@dataclass(frozen=True)
class Options:
    """What a scoring process needs besides the bundle (plain values: they travel to workers)."""

    target_fpr: float | None = None  # None: the bundle's calibrated target
    max_pixels: int = 16_000_000
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = 0
    # Images per ONNX Runtime call. This small graph runs fastest per image in batches of
    # 32-64 on CPU (larger ones leave the caches; BENCHMARKS.md); use more on a GPU.
    batch_size: int = 64


@dataclass(eq=False)
class Model:
    """A bundle ready to score: manifest, session, judge and the target FPR of the job."""

    manifest: Manifest
    session: ort.InferenceSession
    judge: Judge
    target_fpr: float
    options: Options

    @property
    def group(self) -> int:
        """Rows decoded and scored together: GROUP, fewer for large tiled frames (~64 MB)."""
        frame = self.manifest.frame_spec()
        pixels = frame.channels * frame.height * frame.width
        return max(1, min(GROUP, GROUP_FLOATS // pixels))

    @property
    def images_per_call(self) -> int:
        """Images per ONNX Runtime call: whole images, or tiled frames by their tiles."""
        tiling, tile = self.manifest.tiling, self.manifest.input
        if tiling is None:
            return self.options.batch_size
        frame = self.manifest.frame_spec()
        per_frame = count(
            frame.height,
            frame.width,
            (tile.height, tile.width),
            (tiling.stride_height, tiling.stride_width),
        )
        return max(1, self.options.batch_size // per_frame)

    def run(self, inputs: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """The graph's per-image outputs: one call, or for a tiled bundle the max over tiles."""
        tiling = self.manifest.tiling
        if tiling is None:
            return run(self.session, inputs, names)
        return score_frames(
            self.session,
            inputs,
            tiling,
            self.manifest.input,
            names,
            frames_per_call=len(inputs),
            tiles_per_call=self.options.batch_size,
        )

    @property
    def ref(self) -> dict[str, object]:
        """What the service's responses name the model by."""
        m = self.manifest
        return {"name": m.name, "version": m.version, "sha256": m.onnx.sha256}


def open_model(bundle: Path, options: Options) -> Model:
    """Validate a bundle, open its session and check the target FPR; `BundleError` or
    `CalibrationError` saying what is wrong."""
    manifest, model_path = load_bundle(bundle)
    return _model(manifest, model_path, options)


def open_model_bytes(manifest_json: str, onnx: bytes, options: Options) -> Model:
    """`open_model` from a bundle's manifest and graph shipped as bytes (to a Ray actor,
    which may run on a machine without the bundle's folder)."""
    manifest = Manifest.model_validate_json(manifest_json)
    with tempfile.TemporaryDirectory(prefix="vigil-bundle-") as folder:
        path = Path(folder) / manifest.onnx.file
        path.write_bytes(onnx)
        if sha256_file(path) != manifest.onnx.sha256:
            raise BundleError("the graph received does not match the manifest's sha256")
        return _model(manifest, path, options)


def _model(manifest: Manifest, model_path: Path, options: Options) -> Model:
    try:
        session = create_session(
            model_path, options.providers, options.intra_op_threads, allow_spinning=False
        )
    except VigilError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise BundleError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
    check_graph(session, manifest)
    judge = Judge(manifest)
    target_fpr = options.target_fpr or judge.default_fpr
    judge.thresholds(target_fpr)  # CalibrationError when the calibration cannot meet it
    return Model(manifest, session, judge, target_fpr, options)


def schema(model: Model) -> pa.Schema:
    """The result table's columns, with the bundle and the verdict's settings as metadata."""
    m = model.manifest
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("is_anomaly", pa.bool_()),
        pa.field("score", pa.float32()),
        *(pa.field(name, pa.float32()) for name in m.scores),
        pa.field("flagged_by", pa.list_(pa.string())),
        pa.field("p_value", pa.float64()),
        pa.field("error", pa.string()),
    ]
    meta = {
        "model": model.ref,
        "target_fpr": model.target_fpr,
        "primary_score": m.primary_score,
        "verdict_scores": model.judge.verdict_scores,
        "thresholds": model.judge.thresholds(model.target_fpr),
    }
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta).encode()})


def score(model: Model, decoded: Decoded, out_schema: pa.Schema) -> pa.Table:
    """The result rows of one decoded group, run through the graph `batch_size` images per
    ONNX Runtime call; a call that fails marks its images `inference_failed`."""
    names = list(model.manifest.scores)
    inputs, size = decoded.inputs, model.images_per_call
    parts, failed = [], np.zeros(len(inputs), bool)
    for start in range(0, len(inputs), size):
        try:
            parts.append(model.run(inputs[start : start + size], names))
        except Exception:
            log.exception(
                "ONNX Runtime failed on a batch of %d images", len(inputs[start : start + size])
            )
            failed[start : start + size] = True
    verdicts = []
    if parts:
        raw = {name: np.concatenate([part[name] for part in parts]) for name in names}
        verdicts = model.judge.judge(raw, model.target_fpr)
    # Each row's verdict (None for an error), in input order.
    ran, judged, errors, per_row = iter(failed), iter(verdicts), [], []
    for error in decoded.errors:
        if error is None and next(ran):
            error = INFERENCE_ERROR
        errors.append(error)
        per_row.append(next(judged) if error is None else None)
    columns: dict[str, list[Any]] = {
        "path": list(decoded.paths),
        "is_anomaly": [None if v is None else v.is_anomaly for v in per_row],
        "score": [None if v is None else v.score for v in per_row],
        **{name: [None if v is None else v.scores[name] for v in per_row] for name in names},
        "flagged_by": [None if v is None else v.flagged_by for v in per_row],
        "p_value": [None if v is None else v.p_values[model.judge.primary] for v in per_row],
        "error": errors,
    }
    return pa.Table.from_pydict(columns, schema=out_schema)
