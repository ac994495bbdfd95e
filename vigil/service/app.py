"""The Vigil HTTP service: `create_app(settings) -> FastAPI`.

Process model: ONE uvicorn worker per process, on purpose. The dynamic batcher gathers
concurrent requests inside that process, so several workers would split the traffic into
smaller batches and each would hold its own copy of the model (and GPU memory). Scale out
with more containers (one per GPU), behind a load balancer; `vigil serve` always runs
exactly one worker.

The lifespan starts loading the bundle in the background, so /healthz answers at once and
/readyz turns 200 only when the model is loaded and every batch shape is warmed up. It
installs a SIGHUP handler (reload the current bundle path), and on shutdown stops taking
work, finishes the queued images and closes the batcher.

This module and everything it imports never import torch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from importlib import metadata

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil.service import errors
from vigil.service.errors import ApiError, error_body
from vigil.service.metrics import UNMATCHED, Metrics
from vigil.service.model import ModelError, ModelHolder
from vigil.service.routes import admin, probes, score
from vigil.service.settings import Settings

log = logging.getLogger("vigil.app")

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


class RequestGuard:
    """ASGI middleware in front of the routes.

    - Body size limit: a Content-Length over the limit is refused (413) when the route
      first reads the body, before a byte of it is read; a chunked body is counted as it
      streams in and refused as soon as it passes the limit.
    - Request metrics: count and duration by route template (`unmatched` for unknown paths).
    - Unexpected exceptions: logged with traceback and answered 500 in the one error shape.
    - Fast path: `POST /score` goes straight to `score_app` (a raw ASGI handler, see
      `score.Scorer`), before FastAPI's router, under the same limit, metrics (route
      `/score`) and 500 handling; the FastAPI route stays registered for the docs.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        metrics: Metrics,
        score_app: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.score_app = score_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        app = self.app
        fast = False
        if self.score_app is not None and scope["method"] == "POST" and _is_score(scope):
            app, fast = self.score_app, True
        limit = self.max_body_bytes
        status = 500
        response_started = False
        received = 0
        checked = False

        async def limited_receive() -> Message:
            nonlocal received, checked
            if not checked:
                checked = True
                length = _content_length(scope)
                if length is not None and length > limit:
                    raise _too_large(limit, f"Content-Length is {length}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit, "the streamed body passed it")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await app(scope, limited_receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if response_started:
                raise
            status = 500
            body = error_body("internal_error", "internal server error; the log has the details")
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            if fast:
                path: str | None = score.ROUTE
            else:
                route = scope.get("route")
                path = getattr(route, "path", None) if route is not None else None
            self.metrics.observe_request(
                path or UNMATCHED, scope["method"], status, time.perf_counter() - started
            )


def _is_score(scope: Scope) -> bool:
    """Whether the request's path, less any root_path (as Starlette routes), is /score."""
    path: str = scope["path"]
    if path == score.ROUTE:
        return True
    root: str = scope.get("root_path", "")
    return bool(root) and path == root + score.ROUTE


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int, why: str) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is over {limit} bytes ({why})")


def _freeze_startup_objects() -> None:
    """Move everything alive at start-up out of the cyclic GC's reach (gc.freeze).

    The imported libraries leave ~75,000 long-lived objects that every full collection
    would scan again: under load that was a 15-35 ms pause every few seconds, which all
    requests in flight wait out (the p99.9). Called before the first model loads, so a
    model (which a reload retires) is never frozen; frozen objects are still freed by
    reference counting, only cycles among them would stay.
    """
    gc.collect()
    gc.freeze()


class Service:
    """What the lifespan drives: the model holder, start-up load, SIGHUP reloads."""

    def __init__(self, settings: Settings, metrics: Metrics, holder: ModelHolder) -> None:
        self.settings = settings
        self.metrics = metrics
        self.holder = holder
        self.tasks: set[asyncio.Task[None]] = set()

    async def load_initial(self) -> None:
        try:
            if self.settings.bundle is None:
                log.error("no bundle configured: set VIGIL_BUNDLE or pass --bundle")
                return
            await self.holder.load(self.settings.bundle, reload=False)
        except ModelError:
            pass  # logged by the holder; /readyz answers 503 with the reason
        finally:
            self.holder.first_load.set()

    async def reload(self) -> None:
        """Reload the current bundle path (SIGHUP); failures are logged and counted."""
        path = self.holder.path
        if path is None:
            log.error("reload requested, but no bundle is configured")
            return
        log.info("reloading %s", path)
        with suppress(ModelError):  # logged and counted by the holder
            await self.holder.load(path)

    def spawn_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def install_sighup(self) -> Callable[[], None]:
        """Reload on SIGHUP (only possible from the main thread); returns the uninstaller."""
        hup = getattr(signal, "SIGHUP", None)
        if hup is None or threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(hup, self.spawn_reload)
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("cannot install a SIGHUP handler; use POST /admin/reload")
            return lambda: None

        def remove() -> None:
            loop.remove_signal_handler(hup)

        return remove


def create_app(settings: Settings | None = None, *, fast_score: bool = True) -> FastAPI:
    """The FastAPI app for `settings` (default: from the environment).

    `fast_score=False` serves POST /score through FastAPI's router instead of the raw-ASGI
    fast path (same responses, slower; the tests compare the two).
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics(settings.max_batch)
    holder = ModelHolder(settings, metrics)
    service = Service(settings, metrics, holder)
    scorer = score.Scorer(settings, holder, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        _freeze_startup_objects()
        loader = asyncio.create_task(service.load_initial())
        uninstall = service.install_sighup()
        try:
            yield
        finally:
            uninstall()
            for task in [loader, *service.tasks]:
                task.cancel()
            await asyncio.gather(loader, *service.tasks, return_exceptions=True)
            await holder.close()
            sys.setswitchinterval(switch_interval)
            log.info("stopped")

    app = FastAPI(
        title="Vigil",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(score.router(scorer))
    app.include_router(probes.router(holder, metrics))
    app.include_router(admin.router(settings, holder))
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        score_app=scorer.asgi if fast_score else None,
    )
    app.state.service = service
    return app
