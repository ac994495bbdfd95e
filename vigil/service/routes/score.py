"""POST /score: decode, preprocess, batch, judge, answer; served by a raw ASGI endpoint.

This is the production path of the service. It is a plain ASGI app rather than a
FastAPI route because FastAPI's dependency solving and response classes cost more than
the rest of a one-image request's Python work (BENCHMARKS.md); its OpenAPI operation is
declared here (`OPERATION`) and merged into the document by `service.openapi`.

A bad file in a multi-file request fails the whole request with the 4xx of that file's
error, naming it in `error.filename` (the first bad file in upload order); no file of
that request is scored. Every file is decoded before any is scored, so a bad request
never reaches the model.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from vigil.core.bundle import (
    ANOMALY_MAP_OUTPUT,
    ERROR_MAP_OUTPUT,
    RECONSTRUCTION_IMAGE_OUTPUT,
    InputSpec,
)
from vigil.core.errors import VigilError
from vigil.core.preprocess import ImageError, load_image
from vigil.core.tiling import score_frames
from vigil.core.verdicts import Verdict
from vigil.service import openapi
from vigil.service.batching import Row
from vigil.service.errors import ApiError, error_body
from vigil.service.metrics import Metrics
from vigil.service.middleware import AsgiRoute
from vigil.service.model import LoadedModel, ModelHolder
from vigil.service.responses import dumps, send_json
from vigil.service.schemas import KNOWN_SCORES, ScoreResponse
from vigil.service.settings import Settings
from vigil.service.uploads import FIELD, Upload, read_uploads

ROUTE = "/score"
# The per-pixel outputs a heatmap=true answer shows (the heatmap is the bundle's own).
MAP_NAMES = (ANOMALY_MAP_OUTPUT, ERROR_MAP_OUTPUT, RECONSTRUCTION_IMAGE_OUTPUT)
# Bodies above this many bytes are decoded in a worker thread, not on the event loop.
INLINE_DECODE_BYTES = 256 * 1024

DESCRIPTION = f"""Score one or more images.

Send a multipart/form-data body with the images in the field `{FIELD}` (repeat it for
several files), or one raw image as the body with `Content-Type: image/png`, `image/jpeg`, ...
PNG, JPEG, BMP, GIF, TIFF, WebP and PBM/PGM/PPM are accepted (other formats: 415
not_an_image); each image is turned upright by its EXIF orientation,
converted to the bundle's colour mode and resized to its input size by the bundle's policy.

One result per file, in upload order. `score` is the bundle's primary score; `is_anomaly`
is true when any verdict score exceeds its threshold (`flagged_by` names them).

**A bad file in a multi-file request fails the whole request** with that file's error
(415 not_an_image, 422 corrupt_image / empty_file, 413 too_many_pixels), naming it in
`error.filename`; no file of the request is scored. Resend the good files alone.
"""

# The media types of the accepted formats (core.preprocess.FORMATS), as a part may declare.
IMAGE_TYPES = (
    "image/png", "image/jpeg", "image/bmp", "image/gif", "image/tiff", "image/webp",
    "image/x-portable-anymap",
)  # fmt: skip

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    FIELD: {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "minItems": 1,
                        "description": "one or more image files",
                    }
                },
                "required": [FIELD],
            },
            "encoding": {FIELD: {"contentType": ", ".join(IMAGE_TYPES)}},
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


# The query parameters are parsed by hand (`_query`): FastAPI's per-parameter validation
# costs more than the rest of the request's Python work; they are documented here instead.
PARAMETERS = [
    {
        "name": "target_fpr",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "description": "target false-positive rate for this request; the thresholds are "
        "re-derived from the bundle's calibration distribution (GET /model gives the supported "
        "range as target_fpr_range; outside it: 422 invalid_target_fpr). Default: "
        "VIGIL_TARGET_FPR, else the bundle's calibrated target.",
    },
    {
        "name": "heatmap",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "add each image's per-pixel error map (`heatmap`, scaled to "
        "`heatmap_max`) and its reconstruction (`reconstruction`) as base64 PNGs at the "
        "model's input size; without it the graph computes neither",
    },
]
TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


OPERATION: dict[str, Any] = {
    "summary": "Score images for anomalies",
    "description": DESCRIPTION,
    "operationId": "score_score_post",
    "parameters": PARAMETERS,
    "requestBody": REQUEST_BODY,
    "responses": openapi.responses(
        ScoreResponse,
        {
            400: "malformed multipart body",
            413: "body, file count or image pixels over the limit",
            415: "not an image, or an unsupported Content-Type",
            422: "no files, undecodable image, or target_fpr out of range",
            503: "no model loaded yet, or overloaded (retry after Retry-After seconds)",
        },
    ),
}


def operation(max_files: int, fpr_range: tuple[float, float] | None) -> dict[str, Any]:
    """OPERATION with this service's limits: at most `max_files` files, and `target_fpr`
    within the range the loaded model's calibration supports (inclusive), when one is."""
    op = copy.deepcopy(OPERATION)
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    form["properties"][FIELD]["maxItems"] = max_files
    if fpr_range is not None:
        low, high = fpr_range
        target = next(p for p in op["parameters"] if p["name"] == "target_fpr")
        target["schema"] = {"type": "number", "minimum": low, "maximum": high}
    return op


class ScoreEndpoint:
    """POST /score as an ASGI app: every client-visible error in the one error shape."""

    def __init__(self, settings: Settings, holder: ModelHolder, metrics: Metrics) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self.score(scope["query_string"], scope["headers"], receive)
        except VigilError as exc:
            await _send_error(send, ApiError.of(exc))
            return
        except ApiError as exc:
            await _send_error(send, exc)
            return
        await send_json(send, 200, body)

    async def score(
        self, query_string: bytes, headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> bytes:
        """The JSON response body of a request; `ApiError` or `VigilError` for a bad one."""
        holder, settings = self.holder, self.settings
        target_fpr, heatmap = _query(query_string)
        current = holder.require()
        _thresholds(current, target_fpr)  # 503 / 422 before reading the body
        # Overloaded: refused before its body is parsed and decoded, the cheapest way out.
        current.batcher.admit()
        uploads = await read_uploads(headers, receive, settings.max_files)
        model = holder.acquire()
        try:
            model.batcher.admit(len(uploads))  # again before decoding, now they are counted
            fpr = _thresholds(model, target_fpr)
            spec = model.manifest.frame_spec()  # the input; for a tiled bundle the frame
            if sum(len(u.data) for u in uploads) > INLINE_DECODE_BYTES:
                arrays = await asyncio.to_thread(_prepare, uploads, spec, settings.max_image_pixels)
            else:
                arrays = _prepare(uploads, spec, settings.max_image_pixels)
            if model.manifest.tiling is not None:
                # every tile of every image in one session call; scores = max over tiles
                raw = await asyncio.to_thread(_score_tiles, model, arrays, heatmap)
            else:
                rows = await model.batcher.score(arrays, heatmap)
                raw = _gather(rows, model.score_names, MAP_NAMES if heatmap else ())
            maps = _maps(raw, model.manifest.heatmap_output()) if heatmap else None
            verdicts = model.judge.judge(raw, fpr)
            self.metrics.observe_verdicts(
                [v.scores for v in verdicts], [v.flagged_by for v in verdicts]
            )
            return _render(model, fpr, uploads, verdicts, maps)
        finally:
            holder.release(model)


def route(endpoint: ScoreEndpoint) -> AsgiRoute:
    return AsgiRoute(ROUTE, endpoint, methods=["POST"], include_in_schema=False)


async def _send_error(send: Send, exc: ApiError) -> None:
    await send_json(send, exc.status, error_body(exc.code, exc.message, exc.filename), exc.headers)


def _query(query_string: bytes) -> tuple[float | None, bool]:
    """`target_fpr` and `heatmap` from the query string (422 in the one shape when invalid)."""
    if not query_string:
        return None, False
    params = QueryParams(query_string)
    if not params:
        return None, False
    target_fpr = None
    raw = params.get("target_fpr")
    if raw is not None:
        try:
            target_fpr = float(raw)
        except ValueError:
            target_fpr = math.nan
        if not 0.0 < target_fpr < 1.0:  # NaN fails too
            raise ApiError(
                "invalid_target_fpr", f"target_fpr must be a number in (0, 1), not {raw!r}"
            )
    flag = params.get("heatmap", "false").lower()
    if flag not in TRUE and flag not in FALSE:
        raise ApiError("invalid_request", f"heatmap must be true or false, not {flag!r}")
    return target_fpr, flag in TRUE


def _thresholds(model: LoadedModel, target_fpr: float | None) -> float:
    """The target FPR of this request; `CalibrationError` when the calibration cannot meet it."""
    fpr = model.target_fpr if target_fpr is None else target_fpr
    model.judge.thresholds(fpr)
    return fpr


def _prepare(uploads: list[Upload], spec: InputSpec, max_pixels: int) -> list[np.ndarray]:
    """Decode and preprocess every file, or raise the first file's error, naming it."""
    arrays = []
    for index, upload in enumerate(uploads):
        try:
            arrays.append(load_image(upload.data, spec, max_pixels))
        except ImageError as exc:
            name = upload.filename if upload.filename is not None else f"file #{index + 1}"
            raise ApiError.of(exc, upload.filename, prefix=f"{name}: ") from exc
    return arrays


def _score_tiles(
    model: LoadedModel, arrays: list[np.ndarray], heatmap: bool
) -> dict[str, np.ndarray]:
    """A tiled bundle: every tile of the request's images in one session call."""
    manifest = model.manifest
    assert manifest.tiling is not None
    return score_frames(
        model.session,
        arrays,
        manifest.tiling,
        manifest.input,
        model.score_names,
        [manifest.heatmap_output(), RECONSTRUCTION_IMAGE_OUTPUT] if heatmap else [],
        frames_per_call=len(arrays),
        tiles_per_call=1 << 30,
    )


def _gather(rows: list[Row], scores: list[str], maps: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Per-image arrays for one request's rows (views when they sit in one batch): each
    score [N], and each of `maps` that the batch's outputs hold [N, C, H, W]."""
    first, start = rows[0]
    names = [*scores, *(name for name in maps if name in first)]
    if all(out is first and i == start + k for k, (out, i) in enumerate(rows)):
        return {name: first[name][start : start + len(rows)] for name in names}
    return {name: np.array([out[name][i] for out, i in rows]) for name in names}


def _maps(raw: dict[str, np.ndarray], heat: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each image's (heatmap [1, H, W], reconstruction [C, H, W])."""
    return list(zip(raw[heat], raw[RECONSTRUCTION_IMAGE_OUTPUT], strict=True))


def _render(
    model: LoadedModel,
    fpr: float,
    uploads: list[Upload],
    verdicts: list[Verdict],
    maps: list[tuple[np.ndarray, np.ndarray]] | None,
) -> bytes:
    absent = {name: None for name in KNOWN_SCORES if name not in model.judge.calibration}
    thresholds: dict[str, float | None] = {**verdicts[0].thresholds, **absent} if verdicts else {}
    results = []
    for index, (upload, verdict) in enumerate(zip(uploads, verdicts, strict=True)):
        result: dict[str, Any] = {
            "filename": upload.filename,
            "score": verdict.score,
            "is_anomaly": verdict.is_anomaly,
            "scores": {**verdict.scores, **absent},
            "thresholds": thresholds,
            "p_values": {**verdict.p_values, **absent},
            "flagged_by": verdict.flagged_by,
        }
        if maps is not None:
            error_map, x_hat = maps[index]
            result["heatmap"], result["heatmap_max"] = _heatmap(error_map)
            result["reconstruction"] = _reconstruction(x_hat)
        results.append(result)
    response = {
        "model": model.ref,
        "target_fpr": fpr,
        "results": results,
    }
    return dumps(response)


def _heatmap(error_map: np.ndarray) -> tuple[str, float]:
    """An error map [1, H, W] as a base64 8-bit PNG scaled to its maximum, and that maximum."""
    values = np.nan_to_num(np.asarray(error_map, dtype=np.float32).reshape(error_map.shape[-2:]))
    top = float(values.max())
    scaled = values / top if top > 0 else np.zeros_like(values)
    return _png(scaled), top


def _reconstruction(x_hat: np.ndarray) -> str:
    """A reconstruction [C, H, W] in [0, 1] as a base64 8-bit PNG (grayscale or RGB)."""
    values = np.nan_to_num(np.asarray(x_hat, dtype=np.float32))
    return _png(values[0] if values.shape[0] == 1 else values.transpose(1, 2, 0))


def _png(values: np.ndarray) -> str:
    """Values in [0, 1], [H, W] or [H, W, 3], as a base64 8-bit PNG."""
    pixels = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
