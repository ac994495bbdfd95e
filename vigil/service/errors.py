"""The one error shape of the API, `{"error": {"code", "message", "filename"?}}`, and its handlers.

Every error the service answers, its own or FastAPI's and Starlette's (validation, 404,
405), comes out in this shape with a stable machine-readable `code`:

| status | code                   | when                                                        |
|--------|------------------------|-------------------------------------------------------------|
| 400    | invalid_multipart      | the multipart body cannot be parsed (bad boundary, framing) |
| 400    | client_disconnected    | the client hung up mid-body (never seen by that client)     |
| 401    | unauthorized           | admin route without the right `Authorization: Bearer` token |
| 403    | admin_disabled         | admin route while no VIGIL_ADMIN_TOKEN is configured        |
| 403    | bundle_path_forbidden  | reload from a path outside VIGIL_MODELS_DIR                  |
| 404    | not_found              | unknown route                                               |
| 404    | bundle_not_found       | reload from a path that is not a directory                  |
| 405    | method_not_allowed     | known route, wrong method (`Allow` header lists the right)  |
| 413    | body_too_large         | body over VIGIL_MAX_BODY_BYTES (Content-Length or streamed) |
| 413    | too_many_files         | more than VIGIL_MAX_FILES files in one request              |
| 413    | too_many_pixels        | an image over VIGIL_MAX_IMAGE_PIXELS, decompression bombs   |
| 415    | unsupported_media_type | body neither multipart/form-data nor an image type          |
| 415    | not_an_image           | a file Pillow does not recognise as an image                |
| 422    | corrupt_image          | a recognised image that cannot be decoded (e.g. truncated)  |
| 422    | empty_file             | a zero-byte file                                            |
| 422    | unsupported_image      | decodes, but cannot be converted to the model's colour mode |
| 422    | no_files               | no file in the form field `files` (wrong field name, none)  |
| 422    | invalid_target_fpr     | `target_fpr` not a number or outside the calibrated range   |
| 422    | invalid_request        | any other invalid parameter or JSON body                    |
| 422    | invalid_bundle         | reload of a bundle that fails validation (manifest, sha256) |
| 500    | internal_error         | a bug: logged with its traceback                            |
| 503    | not_ready              | no model loaded (yet): /readyz, /score, /model              |
| 503    | provider_unavailable   | VIGIL_REQUIRE_GPU is set but the session is not on CUDA     |

`filename` is present when the error concerns one uploaded file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("vigil.errors")

# Generic codes for HTTP errors raised by the framework rather than by Vigil.
_STATUS_CODES = {
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
# Error codes of service.preprocess.ImageError, by HTTP status.
IMAGE_ERROR_STATUS = {
    "not_an_image": 415,
    "corrupt_image": 422,
    "empty_file": 422,
    "too_many_pixels": 413,
}
MAX_FILENAME = 256


class ApiError(Exception):
    """A client-visible error: raised anywhere in a request, answered in the one shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        filename: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.filename = filename
        self.headers = dict(headers or {})


def error_body(code: str, message: str, filename: str | None = None) -> bytes:
    error: dict[str, str] = {"code": code, "message": message}
    if filename is not None:
        error["filename"] = filename[:MAX_FILENAME]
    return json.dumps({"error": error}, ensure_ascii=False).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    filename: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        error_body(code, message, filename),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.filename, exc.headers)


def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _STATUS_CODES.get(status, "http_error")
    if status == 404:
        message = "no such route; see /docs for the API"
    elif status == 405:
        message = "method not allowed on this route"
    else:
        message = str(exc.detail)
    return error_response(status, code, message, headers=exc.headers)


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    code = "invalid_request"
    if any(tuple(e.get("loc", ()))[-1:] == ("target_fpr",) for e in errors):
        code = "invalid_target_fpr"
    message = "; ".join(f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
    return error_response(422, code, message or "invalid request")


def install(app: FastAPI) -> None:
    """Route every handled error through the one shape (unexpected ones: see app.RequestGuard)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
