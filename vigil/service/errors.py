"""The API's errors: every code with its HTTP status, the one error shape, and its handlers.

Every error the service answers, its own or FastAPI's and Starlette's (validation, 404,
405), has the shape `{"error": {"code", "message", "filename"?}}` with a stable code from
`ERROR_CODES`. Domain code raises `VigilError`s (bundle, image, calibration, provider,
readiness); this module is where their codes become HTTP statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vigil.core import redact
from vigil.core.errors import VigilError
from vigil.service.responses import dumps, json_response

log = logging.getLogger("vigil.errors")


class Code(NamedTuple):
    status: int
    when: str


ERROR_CODES: dict[str, Code] = {
    "invalid_multipart": Code(400, "the multipart body cannot be parsed (bad boundary, framing)"),
    "client_disconnected": Code(400, "the client hung up mid-body (never seen by that client)"),
    "bad_request": Code(400, "any other malformed request"),
    "unauthorized": Code(401, "admin route without the right `Authorization: Bearer` token"),
    "admin_disabled": Code(403, "admin route while no VIGIL_ADMIN_TOKEN is configured"),
    "bundle_path_forbidden": Code(403, "reload from a path outside VIGIL_MODELS_DIR"),
    "forbidden": Code(403, "any other forbidden request"),
    "not_found": Code(404, "unknown route"),
    "bundle_not_found": Code(404, "reload from a path that holds no bundle (no manifest.json)"),
    "method_not_allowed": Code(405, "known route, wrong method (`Allow` lists the right ones)"),
    "body_too_large": Code(413, "body over VIGIL_MAX_BODY_BYTES (Content-Length or streamed)"),
    "too_many_files": Code(413, "more than VIGIL_MAX_FILES files in one request"),
    "too_many_pixels": Code(413, "an image over VIGIL_MAX_IMAGE_PIXELS, decompression bombs"),
    "unsupported_media_type": Code(415, "body neither multipart/form-data nor an image type"),
    "not_an_image": Code(
        415, "not an image in an accepted format (PNG, JPEG, BMP, GIF, TIFF, ...)"
    ),
    "corrupt_image": Code(422, "a recognised image that cannot be decoded (e.g. truncated)"),
    "empty_file": Code(422, "a zero-byte file"),
    "unsupported_image": Code(422, "decodes, but cannot be converted to the model's colour mode"),
    "no_files": Code(422, "no file in the form field `files` (wrong field name, none)"),
    "invalid_target_fpr": Code(422, "`target_fpr` not a number or outside the calibrated range"),
    "invalid_request": Code(422, "any other invalid parameter or JSON body"),
    "invalid_bundle": Code(422, "reload of a bundle that fails validation (manifest, sha256)"),
    "headers_too_large": Code(431, "request line and headers over VIGIL_MAX_HEADER_BYTES"),
    "internal_error": Code(500, "a bug: logged with its traceback"),
    "not_ready": Code(503, "no model loaded (yet), or it is being unloaded; /readyz: draining"),
    "inference_failed": Code(503, "ONNX Runtime failed on the request's batch (logged); retry"),
    "provider_unavailable": Code(503, "VIGIL_REQUIRE_GPU is set but the session is not on CUDA"),
    "overloaded": Code(
        503, "over VIGIL_MAX_QUEUE or VIGIL_LATENCY_BUDGET_MS: refused at once, with Retry-After"
    ),
}
# The code of an HTTP error raised by the framework rather than by Vigil, by status.
_FRAMEWORK_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "not_ready",
}
MAX_FILENAME = 256


class ApiError(Exception):
    """A client-visible error: raised anywhere in a request, answered in the one shape."""

    def __init__(
        self,
        code: str,
        message: str,
        filename: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = ERROR_CODES[code].status
        self.code = code
        self.message = message
        self.filename = filename
        self.headers = dict(headers or {})

    @classmethod
    def of(cls, exc: VigilError, filename: str | None = None, prefix: str = "") -> ApiError:
        """The answer to a domain error; `prefix` (e.g. the file's name) leads its message."""
        code = exc.code if exc.code in ERROR_CODES else "internal_error"
        retry = exc.retry_after_s
        headers = None if retry is None else {"Retry-After": str(retry)}
        return cls(code, prefix + exc.message, filename, headers)


def error_body(code: str, message: str, filename: str | None = None) -> bytes:
    """The one error shape; filesystem paths in `message` are shown by their last name."""
    error: dict[str, str] = {"code": code, "message": redact.text(message)}
    if filename is not None:
        error["filename"] = filename[:MAX_FILENAME]
    return dumps({"error": error})


def error_response(exc: ApiError) -> Response:
    body = error_body(exc.code, exc.message, exc.filename)
    return json_response(body, exc.status, exc.headers)


def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, VigilError)
    return error_response(ApiError.of(exc))


def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = "no such route; see /docs for the API"
    elif status == 405:
        message = "method not allowed on this route"
    else:
        message = str(exc.detail)
    body = error_body(_FRAMEWORK_CODES.get(status, "http_error"), message)
    return json_response(body, status, exc.headers)


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    code = "invalid_request"
    if any(tuple(e.get("loc", ()))[-1:] == ("target_fpr",) for e in errors):
        code = "invalid_target_fpr"
    message = "; ".join(f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
    return error_response(ApiError(code, message or "invalid request"))


def install(app: FastAPI) -> None:
    """Answer every handled error in the one shape (unhandled ones: middleware.RequestMetrics)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(VigilError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
