"""Admin routes: POST /admin/reload. Bearer-token protected; 403 when no token is configured."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from vigil.core.bundle import MANIFEST_FILE
from vigil.service.errors import ApiError
from vigil.service.model import ModelHolder
from vigil.service.responses import json_response
from vigil.service.schemas import BUNDLE_PATTERN, ReloadRequest, ReloadResponse, error_responses
from vigil.service.settings import Settings
from vigil.service.uploads import read_body

_BUNDLE = re.compile(BUNDLE_PATTERN)
_bearer = HTTPBearer(auto_error=False, description="VIGIL_ADMIN_TOKEN")

RELOAD_DESCRIPTION = """Load a bundle, validate it (manifest schema, sha256), open its session,
warm its batch shapes, then swap it in atomically. Requests in flight finish on the model
they started with. A failed load keeps the current model and answers the reason (403
bundle_path_forbidden, 404 bundle_not_found, 422 invalid_bundle, 503 provider_unavailable).

Optional JSON body `{"bundle": "<path>"}`: absolute or relative to VIGIL_MODELS_DIR, and it
must lie inside that directory (symlinks are resolved first). Without it, the current bundle
path is loaded again (e.g. after `vigil calibrate` rewrote it in place). SIGHUP does the same.
"""


def router(settings: Settings, holder: ModelHolder) -> APIRouter:
    def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        token = settings.token()
        if token is None:
            raise ApiError(
                "admin_disabled", "admin routes are disabled: no VIGIL_ADMIN_TOKEN is set"
            )
        given = credentials.credentials if credentials is not None else ""
        if not same_secret(given, token):
            raise ApiError(
                "unauthorized",
                "send Authorization: Bearer <VIGIL_ADMIN_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="vigil-admin"'},
            )

    api = APIRouter(prefix="/admin", dependencies=[Depends(authorize)])
    errors = error_responses(
        {
            401: "missing or wrong bearer token",
            403: "admin disabled (no token configured), or a path outside the models directory",
            404: "no bundle directory there (no folder, or no manifest.json in it)",
            422: "invalid request body or invalid bundle",
            503: "the required execution provider is not available",
        }
    )

    @api.post(
        "/reload",
        response_model=ReloadResponse,
        responses=errors,
        summary="Hot-reload a bundle",
        description=RELOAD_DESCRIPTION,
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {"schema": ReloadRequest.model_json_schema()},
                },
            }
        },
    )
    async def reload(request: Request) -> Response:
        requested = _requested_bundle(await read_body(request.receive))
        path = bundle_path(requested, holder.path, settings.reload_root)
        started = time.perf_counter()
        model = await holder.load(path)
        body = {
            "status": "reloaded",
            "bundle": public_path(path, settings.reload_root),
            "model": model.ref,
            "provider": model.provider,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return json_response(body)

    return api


def same_secret(given: str, token: str) -> bool:
    """Compare in constant time, the length included: digests of equal size are compared
    (`hmac.compare_digest` alone returns early on a length mismatch)."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(token.encode()).digest())


def public_path(path: Path, root: Path | None) -> str:
    """A bundle's path as an answer shows it: relative to the models directory."""
    if root is not None:
        resolved = path.resolve()
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root)) or "."
    return path.name


def _requested_bundle(raw: bytes) -> str | None:
    """The body's bundle path; None for no body (a blank body is not JSON: 422)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_request", f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"bundle"}:
        raise ApiError("invalid_request", 'the body must be {"bundle": "<path>"} or empty')
    bundle = data.get("bundle")
    if bundle is not None and (not isinstance(bundle, str) or not _BUNDLE.match(bundle)):
        raise ApiError("invalid_request", '"bundle" must be a non-blank path without NUL characters')  # fmt: skip
    return bundle


def bundle_path(requested: str | None, current: Path | None, root: Path | None) -> Path:
    """The bundle a reload should load: the current one, or `requested` inside `root`."""
    if requested is None:
        if current is None:
            raise ApiError("invalid_request", "no bundle is configured; name one")
        return current
    if root is None:
        raise ApiError("bundle_path_forbidden", "no models directory is configured")
    candidate = Path(requested)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        inside = candidate.resolve().is_relative_to(root)
        is_dir = inside and candidate.is_dir()
        # A bundle is a folder with a manifest: a folder without one (the models folder
        # itself, `.`) is no bundle, 404 as a missing one; a manifest that fails validation
        # is an invalid bundle (422, from the load).
        has_manifest = is_dir and (candidate / MANIFEST_FILE).is_file()
    except OSError as exc:  # a name too long, a symlink loop, no permission
        raise ApiError("bundle_not_found", f"{requested[:200]}: {exc.strerror}") from exc
    if not inside:
        raise ApiError(
            "bundle_path_forbidden",
            f"{requested} is outside the models directory {root}; reload only loads from there",
        )
    if not is_dir:
        raise ApiError("bundle_not_found", f"{requested} is not a bundle directory")
    if not has_manifest:
        raise ApiError("bundle_not_found", f"{requested} is not a bundle directory: no {MANIFEST_FILE}")  # fmt: skip
    return candidate
