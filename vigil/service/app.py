"""The Vigil HTTP service: `create_app(settings) -> FastAPI`, wired in one place.

A request passes, outermost first: `RequestMetrics` (count and time it; a bug becomes a
500 in the one error shape), `BodyLimit` (413 before reading too much), then `FastRoute`, which hands POST /score, the production path, straight to
`routes.score.ScoreEndpoint`; every other request goes through FastAPI's router to the
probes (`routes.probes`), admin (`routes.admin`) and browser page (`routes.page`) routes.

Process model: ONE uvicorn worker per process, on purpose. The dynamic batcher gathers
concurrent requests inside that process, so several workers would split the traffic into
smaller batches and each would hold its own copy of the model (and GPU memory). Scale out
with more containers (one per GPU). This module and everything it imports never import
torch.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import FastAPI

from vigil.service import errors, openapi
from vigil.service.drain import Drain
from vigil.service.lifespan import Lifespan
from vigil.service.metrics import Metrics
from vigil.service.middleware import BodyLimit, FastRoute, RequestMetrics
from vigil.service.model import ModelHolder
from vigil.service.routes import admin, page, probes, score
from vigil.service.schemas import ScoreResponse
from vigil.service.settings import Settings

DESCRIPTION = """Image anomaly detection with an autoencoder bundle exported by `vigil train`.

`POST /score` scores images; `GET /model` describes the loaded bundle; `/healthz`,
`/readyz` and `/metrics` serve operations; `POST /admin/reload` hot-reloads a bundle.

Every error has the shape `{"error": {"code", "message", "filename"?}}`.
"""


def _version() -> str:
    try:
        return metadata.version("vigil")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app for `settings` (default: from the environment)."""
    settings = settings if settings is not None else Settings()
    metrics = Metrics(settings.max_batch)
    drain = Drain()  # begun by `vigil serve`'s server on SIGTERM
    holder = ModelHolder(settings, metrics, drain)
    lifespan = Lifespan(settings, holder)
    app = FastAPI(title="Vigil", version=_version(), description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)

    score_route = score.route(score.ScoreEndpoint(settings, holder, metrics))
    app.router.routes.append(score_route)
    app.include_router(probes.router(holder, metrics))
    app.include_router(admin.router(settings, holder))
    app.include_router(page.router(holder))  # GET /: the page to try the model in a browser
    openapi.install(app, lambda: score_paths(settings, holder), [ScoreResponse])

    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(FastRoute, route=score_route)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, drain=drain)
    app.state.lifespan = lifespan
    app.state.drain = drain
    app.state.holder = holder
    return app


def score_paths(settings: Settings, holder: ModelHolder) -> dict[str, dict[str, Any]]:
    """POST /score's operation as this service serves it now (limits, the model's range)."""
    model = holder.current
    fpr_range = model.judge.fpr_range if model is not None else None
    return {score.ROUTE: {"post": score.operation(settings.max_files, fpr_range)}}
