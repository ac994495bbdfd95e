"""The model bundle: the one contract between training and the service.

A bundle is a directory holding `model.onnx` (a graph that maps a float batch
[N, C, H, W] in [0, 1] to per-image scores) and `manifest.json` (this schema).
Training writes it, the service reads it; both go through this module.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vigil.core.errors import VigilError

SCHEMA_VERSION = 2
# Versions this Vigil reads: 1 (before tiling and the local anomaly map) loads unchanged.
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INPUT_NAME = "images"
# Graph outputs that are not per-image scores.
ERROR_MAP_OUTPUT = "error_map"
# Schema 2: the local anomaly map [N, 1, H, W] whose smoothed maximum is the `local` score.
ANOMALY_MAP_OUTPUT = "anomaly_map"
RECONSTRUCTION_IMAGE_OUTPUT = "x_hat"
LATENT_OUTPUT = "latent"
# Optional second graph: latent [N, d] -> images [N, C, H, W], for samples in reports.
DECODER_FILE = "decoder.onnx"


class BundleError(VigilError):
    """A bundle that cannot be used, with a message that says why."""

    code = "invalid_bundle"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    channels: Literal[1, 3]
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    color_mode: Literal["L", "RGB"]
    # Every image is converted to `color_mode`, then resized to (width, height)
    # with bilinear interpolation, ignoring its aspect ratio.
    resize: Literal["bilinear"] = "bilinear"
    value_range: tuple[float, float] = (0.0, 1.0)
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _mode_matches_channels(self) -> InputSpec:
        if (self.color_mode == "L") != (self.channels == 1):
            raise ValueError(f"color_mode {self.color_mode} does not fit {self.channels} channels")
        return self


class ModelInfo(_Strict):
    kind: Literal["ae", "vae", "beta-vae"]
    latent_dim: int
    beta: float | None
    loss: Literal["mse", "bce"]
    denoise: float
    parameters: int


class OnnxInfo(_Strict):
    file: str = MODEL_FILE
    sha256: str
    opset: int
    input_name: str = INPUT_NAME
    outputs: list[str]


class Tiling(_Strict):
    """Schema 2: images are resized to the frame size, then scored by tiles of the input size.

    Every tile goes through the graph; each per-image score is the maximum over the
    image's tiles and maps are stitched back to the frame (`vigil.core.tiling`). The
    calibration scores are per whole image.
    """

    frame_height: int = Field(gt=0)
    frame_width: int = Field(gt=0)
    stride_height: int = Field(gt=0)
    stride_width: int = Field(gt=0)


class Calibration(_Strict):
    """Held-out normal scores, from which every threshold is derived."""

    target_fpr: float = Field(gt=0, lt=1)
    # Schema 2: the target asked for when it was below what n calibration images support
    # (the bundle then holds the nearest supported target in target_fpr, and says why).
    requested_target_fpr: float | None = None
    note: str | None = None
    method: Literal["conformal"] = "conformal"
    # Scores whose union decides the verdict; the FPR budget is split between them.
    verdict_scores: list[str]
    n: int
    # Per score, the calibration scores sorted ascending (all of them).
    scores: dict[str, list[float]]
    data_source: str
    created_at: datetime

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        for name, values in self.scores.items():
            if len(values) != self.n:
                raise ValueError(
                    f"calibration score {name!r} has {len(values)} values, not {self.n}"
                )
            if any(b < a for a, b in itertools.pairwise(values)):
                raise ValueError(f"calibration score {name!r} is not sorted")
        missing = set(self.verdict_scores) - set(self.scores)
        if missing or not self.verdict_scores:
            raise ValueError(f"verdict scores without calibration data: {sorted(missing)}")
        return self


class TrainingInfo(_Strict):
    data_source: str
    normal_class: int | None
    split_sizes: dict[str, int]
    epochs: int
    best_epoch: int
    seed: int
    seconds: float
    device: str
    config: dict[str, Any]
    versions: dict[str, str]
    head: dict[str, float] | None = None  # the defect head's training: steps, final loss, seconds
    # the share of the normal images' variation that is their mean image's: whether
    # `overall` takes `combined` (score_names.overall_parts)
    layout_share: float | None = None


class Manifest(_Strict):
    schema_version: Literal[1, 2] = 2  # SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    created_at: datetime
    model: ModelInfo
    input: InputSpec
    onnx: OnnxInfo
    scores: list[str]
    primary_score: str
    score_descriptions: dict[str, str]
    calibration: Calibration
    training: TrainingInfo
    evaluation: dict[str, Any] = {}
    tiling: Tiling | None = None  # schema 2; None: the whole image is resized to the input

    @model_validator(mode="after")
    def _scores_known(self) -> Manifest:
        if self.primary_score not in self.scores:
            raise ValueError(f"primary score {self.primary_score!r} is not among {self.scores}")
        unknown = set(self.calibration.scores) ^ set(self.scores)
        if unknown:
            raise ValueError(f"scores and calibration scores differ: {sorted(unknown)}")
        missing = set(self.scores) - set(self.onnx.outputs)
        if missing:
            raise ValueError(f"scores not produced by the graph: {sorted(missing)}")
        if self.tiling is not None and (
            self.tiling.frame_height < self.input.height
            or self.tiling.frame_width < self.input.width
        ):
            raise ValueError("the tiling frame is smaller than the model's input (the tile)")
        return self

    def frame_spec(self) -> InputSpec:
        """The spec images are preprocessed to: the frame for a tiled bundle, else the input."""
        if self.tiling is None:
            return self.input
        return self.input.model_copy(
            update={"height": self.tiling.frame_height, "width": self.tiling.frame_width}
        )

    def heatmap_output(self) -> str:
        """The map `?heatmap=true` shows: the local anomaly map where the graph has one."""
        return ANOMALY_MAP_OUTPUT if ANOMALY_MAP_OUTPUT in self.onnx.outputs else ERROR_MAP_OUTPUT

    def public(self) -> dict[str, Any]:
        """The manifest without the bulky calibration distribution."""
        data = self.model_dump(mode="json")
        cal = data["calibration"]
        del cal["scores"]
        return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def read_manifest(bundle: Path) -> Manifest:
    """Read and validate `bundle/manifest.json`; `BundleError` names what is wrong."""
    path = Path(bundle) / MANIFEST_FILE
    if not Path(bundle).is_dir():
        raise BundleError(f"bundle {bundle} is not a directory")
    if not path.is_file():
        raise BundleError(f"bundle {bundle} has no {MANIFEST_FILE}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}") from exc
    return _parse_manifest(text, path)


def _parse_manifest(text: str, path: Path) -> Manifest:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"{path} has schema_version {version!r}; this Vigil reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid manifest: {exc}") from exc


def load_bundle(bundle: Path) -> tuple[Manifest, Path]:
    """Validate a bundle fully: manifest schema, model file present, checksum matches.

    Returns the manifest and the path of the ONNX file.
    """
    manifest = read_manifest(bundle)
    model_path = Path(bundle) / manifest.onnx.file
    if not model_path.is_file():
        raise BundleError(f"bundle {bundle} has no {manifest.onnx.file}")
    _check_sha256(sha256_file(model_path), manifest, model_path)
    return manifest, model_path


def read_bundle(bundle: Path) -> tuple[Manifest, bytes]:
    """`load_bundle`'s checks on one consistent view of the bundle, for a service that may
    load it while `vigil train` or `vigil calibrate --out` replaces it (`core.publish`):
    the manifest and the graph are read through one open handle on the folder, so both
    come from the same version, and the checksum is computed on the very bytes returned,
    which the session is then created from. Returns the manifest and the ONNX graph."""
    try:
        folder = os.open(bundle, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BundleError(f"bundle {bundle} is not a directory") from exc
    try:
        manifest = _parse_manifest(_read_in(folder, MANIFEST_FILE, bundle).decode(), Path(bundle) / MANIFEST_FILE)  # fmt: skip
        graph = _read_in(folder, manifest.onnx.file, bundle)
    finally:
        os.close(folder)
    _check_sha256(hashlib.sha256(graph).hexdigest(), manifest, Path(bundle) / manifest.onnx.file)
    return manifest, graph


def _check_sha256(actual: str, manifest: Manifest, model_path: Path) -> None:
    if actual != manifest.onnx.sha256:
        raise BundleError(
            f"{model_path} has sha256 {actual[:12]}…, the manifest expects "
            f"{manifest.onnx.sha256[:12]}…: the file was changed or is incomplete"
        )


def _read_in(folder: int, name: str, bundle: Path) -> bytes:
    """The file `name` of the open folder `folder` (no path lookup outside it)."""
    if "/" in name or name in ("", ".", ".."):
        raise BundleError(f"bundle {bundle}: {name!r} is not a file name")
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=folder)
    except OSError as exc:
        raise BundleError(f"bundle {bundle} has no {name}") from exc
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_manifest(bundle: Path, manifest: Manifest) -> Path:
    path = Path(bundle) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename: a power cut leaves old or new
    tmp.replace(path)  # atomic: a reader never sees half a manifest
    return path
