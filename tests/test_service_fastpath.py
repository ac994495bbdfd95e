"""`FastRoute` (POST /score before FastAPI's router) answers byte for byte what the router
answers for the same route: same status, headers, body and request metrics, for good
requests and every kind of error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from test_service_support import (
    BASE_URL,
    blob,
    encode,
    files,
    holder_of,
    make_settings,
    metric_samples,
    noise,
)

from vigil.service.app import create_app
from vigil.service.middleware import FastRoute
from vigil.service.settings import Settings

pytestmark = pytest.mark.anyio

GOOD = encode(blob())
ODD = encode(noise(seed=3))
MAX_BODY = 300_000


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def without_fast_route(app: FastAPI) -> FastAPI:
    """The app with every request, POST /score included, routed by FastAPI's router."""
    assert any(m.cls is FastRoute for m in app.user_middleware)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not FastRoute]
    return app


@asynccontextmanager
async def serving(settings: Settings, fast: bool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    if not fast:
        without_fast_route(app)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(holder_of(app).first_load.wait(), 60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
async def pair(vae_bundle: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    settings = make_settings(vae_bundle, max_files=4, max_body_bytes=MAX_BODY, max_batch=1)
    async with AsyncExitStack() as stack:
        fast = await stack.enter_async_context(serving(settings, True))
        slow = await stack.enter_async_context(serving(settings, False))
        yield fast, slow


def multipart(boundary: str, body: bytes) -> dict[str, Any]:
    return {
        "content": body,
        "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    }


async def chunked() -> AsyncIterator[bytes]:
    for _ in range(40):
        yield b"\0" * 65536


# Each case: keyword arguments of `client.post("/score", ...)` (a callable: built per call).
CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "one file": lambda: {"files": files(("a.png", GOOD))},
    "several files": lambda: {"files": files(("a.png", GOOD), ("b.png", ODD), ("c.png", GOOD))},
    "unnamed part": lambda: {"files": [("files", (None, GOOD, "image/png"))]},
    "heatmap and fpr": lambda: {
        "files": files(("a.png", GOOD)),
        "params": {"heatmap": "true", "target_fpr": "0.05"},
    },
    "repeated params": lambda: {
        "files": files(("a.png", GOOD)),
        "params": [("heatmap", "maybe"), ("heatmap", "0")],
    },
    "raw image": lambda: {"content": GOOD, "headers": {"Content-Type": "image/png"}},
    "octet stream": lambda: {
        "content": ODD,
        "headers": {"Content-Type": "application/octet-stream"},
    },
    "bad heatmap": lambda: {"files": files(("a.png", GOOD)), "params": {"heatmap": "maybe"}},
    "bad fpr": lambda: {"files": files(("a.png", GOOD)), "params": {"target_fpr": "2"}},
    "nan fpr": lambda: {"files": files(("a.png", GOOD)), "params": {"target_fpr": "nan"}},
    "fpr out of range": lambda: {"files": files(("a.png", GOOD)), "params": {"target_fpr": "1e-9"}},
    "no body": dict,
    "json body": lambda: {"json": {"image": "x"}},
    "no boundary": lambda: {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}},
    "garbage multipart": lambda: multipart("zz", b"garbage"),
    "unterminated": lambda: multipart(
        "zz", b'--zz\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc'
    ),
    "empty form": lambda: multipart("xyz", b"--xyz--\r\n"),
    "wrong field": lambda: {"data": {"note": "hi"}, "files": {"other": ("x.png", GOOD)}},
    "too many files": lambda: {"files": files(*[(f"{i}.png", GOOD) for i in range(5)])},
    "bad file named": lambda: {"files": files(("a.png", GOOD), ("b.txt", b"not an image"))},
    "corrupt image": lambda: {"files": files(("a.png", GOOD[:60]))},
    "empty file": lambda: {"files": files(("a.png", b""))},
    "raw not an image": lambda: {"content": b"hello", "headers": {"Content-Type": "image/png"}},
    "too large by length": lambda: {
        "content": b"x" * (MAX_BODY + 1),
        "headers": {"Content-Type": "image/png"},
    },
    "too large chunked": lambda: {"content": chunked(), "headers": {"Content-Type": "image/png"}},
}


def request_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        key: value
        for key, value in metric_samples(text).items()
        if key[0] in ("vigil_requests_total", "vigil_request_duration_seconds_count")
    }


async def test_fast_route_matches_the_router(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    fast, slow = pair
    for name, case in CASES.items():
        answers = [await client.post("/score", **case()) for client in (fast, slow)]
        got, want = answers
        assert got.status_code == want.status_code, name
        assert got.headers.raw == want.headers.raw, name
        assert got.content == want.content, name
    # other methods on /score are the router's either way
    for client in (fast, slow):
        assert (await client.get("/score")).status_code == 405
    metrics = [request_metrics((await client.get("/metrics")).text) for client in (fast, slow)]
    assert metrics[0] == metrics[1]
    routes = {dict(labels)["route"] for _, labels in metrics[0]}
    assert routes == {"/score"}  # /metrics is counted after it answers
    ok = ("vigil_requests_total", (("method", "POST"), ("route", "/score"), ("status", "200")))
    assert metrics[0][ok] == 7  # the good cases, "repeated params" included (last value wins)


async def test_openapi_is_unchanged_by_the_fast_route(vae_bundle: Path) -> None:
    settings = make_settings(vae_bundle)
    apps = [create_app(settings), without_fast_route(create_app(settings))]
    assert apps[0].openapi() == apps[1].openapi()
    assert "/score" in apps[0].openapi()["paths"]
