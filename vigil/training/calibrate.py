"""Calibrate thresholds on held-out normal images, and recalibrate an existing bundle.

The math (quantiles, p-values, the union budget) lives in `service.calibration`, shared
with the service, which re-derives thresholds for any target FPR at run time.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vigil.core import calibration as cal
from vigil.core.bundle import (
    ANOMALY_MAP_OUTPUT,
    ERROR_MAP_OUTPUT,
    MANIFEST_FILE,
    Calibration,
    Manifest,
    load_bundle,
    now,
    write_manifest,
)
from vigil.core.publish import staged
from vigil.core.runtime import create_session, run_batched
from vigil.core.tiling import score_frames
from vigil.training.data import DataError, Images, to_inputs


def make_calibration(
    raw: dict[str, np.ndarray],
    score_names: list[str],
    verdict_scores: list[str],
    target_fpr: float,
    source: str,
) -> Calibration:
    """The manifest's calibration block from the graph's scores on held-out normal images."""
    sorted_scores = {name: cal.sorted_scores(raw[name]) for name in score_names}
    n = len(next(iter(sorted_scores.values())))
    cal.check_fpr(target_fpr, n, len(verdict_scores))
    return Calibration(
        target_fpr=target_fpr,
        verdict_scores=verdict_scores,
        n=n,
        scores={name: values.tolist() for name, values in sorted_scores.items()},
        data_source=source,
        created_at=now(),
    )


def score_images(bundle: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of a bundle's graph for a float batch, through ONNX Runtime.

    For a tiled bundle, `images` are frames (`manifest.frame_spec()`): per-image scores are
    the max over each image's tiles and the maps are stitched (`error_map`, `anomaly_map`).
    """
    manifest, model_path = load_bundle(bundle)
    session = create_session(model_path, providers=["CPUExecutionProvider"])
    if manifest.tiling is None:
        return run_batched(session, images)
    maps = [m for m in (ERROR_MAP_OUTPUT, ANOMALY_MAP_OUTPUT) if m in manifest.onnx.outputs]
    return score_frames(session, images, manifest.tiling, manifest.input, manifest.scores, maps)


def recalibrate(
    bundle: Path,
    normals: Images,
    target_fpr: float | None,
    out: Path | None,
    verdict: Sequence[str] | None = None,
) -> tuple[Path, Manifest]:
    """A new bundle version whose thresholds come from `normals`; the ONNX file is untouched.
    `verdict`: new verdict scores (default: the bundle's)."""
    manifest, _ = load_bundle(bundle)
    verdict_scores = cal.check_verdict(
        verdict or manifest.calibration.verdict_scores, manifest.scores
    )
    if len(normals) == 0:
        raise DataError(f"{normals.source}: no normal images to calibrate on")
    raw = score_images(bundle, to_inputs(normals, manifest.frame_spec()))
    calibration = make_calibration(
        raw,
        manifest.scores,
        verdict_scores,
        target_fpr if target_fpr is not None else manifest.calibration.target_fpr,
        normals.source,
    )
    updated = manifest.model_copy(
        update={"calibration": calibration, "version": manifest.version + 1, "created_at": now()}
    )
    target = out or bundle
    if target == bundle:
        # In place, one file at a time, each replaced atomically: the previous manifest is
        # kept beside the new one, then the manifest is swapped (model.onnx is untouched).
        shutil.copy2(bundle / "manifest.json", bundle / f"manifest.v{manifest.version}.json")
        write_manifest(target, updated)
        return target, updated
    with staged(target, MANIFEST_FILE) as folder:  # a new folder: published whole, or not at all
        shutil.copytree(bundle, folder, dirs_exist_ok=True)
        write_manifest(folder, updated)
    return target, updated
