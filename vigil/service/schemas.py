"""Response models: they document the API in the OpenAPI schema.

The hot path (`POST /score`) serialises its own JSON and returns a `Response`, so these
models describe that response without validating every one at run time; the API tests
validate real responses against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vigil.core.score_names import SCORES

# Scores a response always names; those the bundle lacks (kl for an AE) are null.
KNOWN_SCORES = tuple(SCORES)


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code (see the error table)")
    message: str = Field(description="what is wrong, for people")
    filename: str | None = Field(
        None, description="the uploaded file the error concerns; absent otherwise"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelRef(BaseModel):
    name: str
    version: int
    sha256: str = Field(description="sha256 of the bundle's ONNX file")


class ScoreResult(BaseModel):
    filename: str | None = Field(description="the upload's filename; null for a raw body")
    score: float = Field(description="the bundle's primary score")
    is_anomaly: bool = Field(description="true when any verdict score exceeds its threshold")
    scores: dict[str, float | None] = Field(
        description="every raw score; null for a score the bundle does not have (kl for an AE)"
    )
    thresholds: dict[str, float | None] = Field(
        description="per-score thresholds at this request's target FPR (verdict scores share "
        "the FPR budget)"
    )
    p_values: dict[str, float | None] = Field(
        description="conformal p-values against the calibration distribution"
    )
    flagged_by: list[str] = Field(description="the verdict scores above their threshold")
    heatmap: str | None = Field(
        None,
        description="with heatmap=true: the per-pixel local anomaly map (the error map for "
        "bundles without one) as a base64 8-bit grayscale PNG at the model's input size (a tiled "
        "bundle's: the frame, stitched from its tiles), scaled so that 255 = heatmap_max",
    )
    heatmap_max: float | None = Field(None, description="the error value shown as 255")
    reconstruction: str | None = Field(
        None,
        description="with heatmap=true: the model's reconstruction of the image as a base64 8-bit "
        "PNG (grayscale or RGB, the model's colour mode) at the model's input size",
    )


class ScoreResponse(BaseModel):
    model: ModelRef
    target_fpr: float = Field(description="the target false-positive rate the verdicts use")
    results: list[ScoreResult] = Field(description="one result per file, in upload order")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: ModelRef
    provider: str


class ModelDescription(BaseModel):
    """The manifest's public part (no calibration scores) plus what this process made of it."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: int
    model: dict[str, Any] = Field(description="kind, latent_dim, beta, loss, ...")
    input: dict[str, Any] = Field(description="the input spec: channels, size, colour mode")
    scores: list[str]
    primary_score: str
    calibration: dict[str, Any] = Field(description="target_fpr, verdict_scores, n, data source")
    training: dict[str, Any]
    provider: str = Field(description="the ONNX Runtime execution provider in use")
    providers: list[str]
    target_fpr: float = Field(description="the default target FPR in force")
    target_fpr_range: list[float] = Field(description="[lowest, highest] allowed target_fpr")
    thresholds: dict[str, float] = Field(description="thresholds at the default target FPR")
    batching: dict[str, Any]


# A reload's bundle path as the route checks it (else 422 invalid_request): not blank, no
# NUL character. Blank is spelled out, not `\s`, which regex dialects disagree on (Python's
# counts \x1c-\x1f, ECMAScript's, which JSON Schema uses, does not).
BUNDLE_PATTERN = r"^[^\x00]*[^\x00 \t\n\r\f\v][^\x00]*$"


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # as the route: other keys are refused (422)

    bundle: str | None = Field(
        None,
        min_length=1,
        pattern=BUNDLE_PATTERN,
        description="bundle directory, absolute or relative to VIGIL_MODELS_DIR; must lie inside "
        "it. Default: reload the current bundle path.",
    )


class ReloadResponse(BaseModel):
    status: str
    bundle: str
    model: ModelRef
    provider: str
    seconds: float


def error_responses(texts: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: each status with the one error shape and a text."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in texts.items()}
