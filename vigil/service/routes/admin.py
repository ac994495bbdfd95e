"""Admin routes: POST /admin/reload. Bearer-token protected; 403 when no token is configured."""

from __future__ import annotations

import hmac
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from vigil.service.errors import ApiError
from vigil.service.model import ModelHolder
from vigil.service.routes.uploads import read_body
from vigil.service.schemas import ReloadRequest, ReloadResponse, error_responses
from vigil.service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="VIGIL_ADMIN_TOKEN")

RELOAD_DESCRIPTION = """Load a bundle, validate it (manifest schema, sha256), open its session,
warm every batch shape, then swap it in atomically. Requests in flight finish on the model
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
                403, "admin_disabled", "admin routes are disabled: no VIGIL_ADMIN_TOKEN is set"
            )
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "send Authorization: Bearer <VIGIL_ADMIN_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="vigil-admin"'},
            )

    api = APIRouter(prefix="/admin", dependencies=[Depends(authorize)])
    errors = error_responses(
        {
            401: "missing or wrong bearer token",
            403: "admin disabled (no token configured), or a path outside the models directory",
            404: "no such bundle directory",
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
        path = holder.resolve(requested)
        started = time.perf_counter()
        model = await holder.load(path)
        body = {
            "status": "reloaded",
            "bundle": str(path),
            "model": model.ref,
            "provider": model.provider,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return Response(json.dumps(body), media_type="application/json")

    return api


def _requested_bundle(raw: bytes) -> str | None:
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_request", f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"bundle"}:
        raise ApiError(422, "invalid_request", 'the body must be {"bundle": "<path>"} or empty')
    bundle = data.get("bundle")
    if bundle is not None and (not isinstance(bundle, str) or not bundle.strip()):
        raise ApiError(422, "invalid_request", '"bundle" must be a non-empty path string')
    return bundle
