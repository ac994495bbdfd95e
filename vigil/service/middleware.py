"""The ASGI middleware every HTTP request passes, outermost first (see `app.create_app`):

1. `RequestMetrics`: count and time the request by route template and status; a bug
   (an unexpected exception) is logged and answered 500 in the one error shape; while
   the service drains after SIGTERM, every answer says `Connection: close`.
2. `BodyLimit`: a body over the limit is refused (413) before it is read.
3. `FastRoute`: POST /score goes straight to its endpoint, skipping the router walk.
"""

from __future__ import annotations

import logging
import time

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil.service.drain import Drain
from vigil.service.errors import ApiError, error_body
from vigil.service.metrics import UNMATCHED, Metrics
from vigil.service.responses import send_json

log = logging.getLogger("vigil.app")
CONNECTION_CLOSE = (b"connection", b"close")


class RequestMetrics:
    """`vigil_requests_total` and `vigil_request_duration_seconds` for every HTTP request,
    and `500 internal_error` for a bug on any route.

    The route label is the template of the route that answered (`scope["route"]`, set by
    the router or by `FastRoute`), `unmatched` for unknown paths: no label grows unbounded.
    The 500 is answered here, not by Starlette's handler (plain text, and blind to the
    raw-ASGI /score path); one layer does both because each layer costs a share of a
    one-image request. For the same reason it also marks answers `Connection: close`
    during a drain (`service.drain`): uvicorn then closes each connection after its answer.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, drain: Drain) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0  # no response started yet

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.drain.active:
                    headers = [*message.get("headers", ()), CONNECTION_CLOSE]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status:
                raise  # too late for an error body; the server closes the connection
            status = 500
            body = error_body("internal_error", "internal server error; the log has the details")
            await send_json(send, 500, body)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED
            self.metrics.observe_request(
                path, scope["method"], status or 500, time.perf_counter() - started
            )


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413 `body_too_large`.

    A Content-Length over the limit is refused when the handler first reads the body,
    before a byte of it is read; a chunked body is counted as it streams in and refused
    as soon as it passes the limit. The `ApiError` is raised from `receive`, so it reaches
    the handler like any other request error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
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

        await self.app(scope, limited_receive, send)


class AsgiRoute(Route):
    """A route to a plain ASGI app that names itself in `scope["route"]` when it matches,
    as FastAPI's own routes do, so `RequestMetrics` labels its requests (405s included)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


class FastRoute:
    """Serve one route's requests straight from its endpoint, before FastAPI's router.

    For POST /score, the production path: FastAPI's router, exception middleware and
    request wrappers cost a measurable share of a one-image request (BENCHMARKS.md).
    The route stays in the router's table, which answers its other methods (405) and any
    request this class does not take; both reach the same endpoint.
    """

    def __init__(self, app: ASGIApp, route: Route) -> None:
        self.app = app
        self.route = route
        self.methods = route.methods or set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.methods and self._matches(scope):
            scope["route"] = self.route
            await self.route.app(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _matches(self, scope: Scope) -> bool:
        """The path, less any root_path (as Starlette's router strips it), is the route's."""
        path: str = scope["path"]
        if path == self.route.path:
            return True
        root: str = scope.get("root_path", "")
        return bool(root) and path == root + self.route.path


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int, why: str) -> ApiError:
    return ApiError("body_too_large", f"the request body is over {limit} bytes ({why})")
