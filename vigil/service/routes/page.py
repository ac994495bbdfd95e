"""The browser page: GET / (one HTML page), /static/* (its CSS and JS modules, shipped in
the package) and /report/* (the loaded bundle's training report, read-only).

The page is plain HTML, CSS and JavaScript modules: no CDN, no build step, no framework.
It talks to the API like any client (GET /model, POST /score). Files are served only
from inside their folder: a path that leaves it, by `..`, an absolute path or a symlink
pointing out, is answered 404 `not_found` in the one error shape, as a missing file is.
A bundle trained with `--no-report` has no `report/`: every /report/ path is then a 404,
which the page shows as "no training report".
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from vigil.service.errors import ApiError
from vigil.service.model import ModelHolder

STATIC = Path(__file__).resolve().parents[1] / "static"
INDEX = "index.html"
REPORT = "report"
# The page loads nothing from elsewhere; images come from data: URLs (API answers, canvas)
# and blob: URLs (the files the user picked).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# A report is a file in a bundle, not code of this service: no scripts, its own origin.
REPORT_POLICY = "sandbox; default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'"
NO_REPORT = "the loaded bundle has no training report (it was trained with --no-report)"


def contained(root: Path, relative: str) -> Path:
    """The regular file `relative` names inside `root`, after resolving `..` and symlinks.

    Anything else (missing, a folder, outside `root`) is `ApiError("not_found")`.
    """
    missing = ApiError("not_found", f"no file {relative!r} here")
    try:
        base = root.resolve(strict=True)
        target = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        raise missing from None
    if not target.is_relative_to(base) or not target.is_file():
        raise missing
    return target


def _file(path: Path, policy: str) -> Response:
    headers = {
        "Cache-Control": "no-cache",  # revalidate (ETag): a new version shows at once
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": policy,
    }
    return FileResponse(path, headers=headers)


def router(holder: ModelHolder) -> APIRouter:
    api = APIRouter(include_in_schema=False)

    @api.get("/")
    async def index() -> Response:
        return _file(STATIC / INDEX, PAGE_POLICY)

    @api.get("/static/{path:path}")
    async def static(path: str) -> Response:
        return _file(contained(STATIC, path), PAGE_POLICY)

    @api.get("/report/{path:path}")
    async def report(path: str) -> Response:
        folder = holder.require().path / REPORT
        if not folder.is_dir():
            raise ApiError("not_found", NO_REPORT)
        return _file(contained(folder, path), REPORT_POLICY)

    return api
