"""/readyz and the `vigil_ready` gauge have one owner, so they agree in every state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from test_service_support import (
    BASE_URL,
    blob,
    copy_bundle,
    encode,
    files,
    hold_loading,
    holder_of,
    make_settings,
    metric,
    metric_samples,
)

from vigil.core.bundle import BundleError
from vigil.service.app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def state(client: httpx.AsyncClient) -> tuple[int, float]:
    """(/readyz status, vigil_ready value), read one after the other."""
    ready = await client.get("/readyz")
    samples = metric_samples((await client.get("/metrics")).text)
    return ready.status_code, metric(samples, "vigil_ready")


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, timeout=60)


class Crash(BaseException):
    """Not an Exception: it ends the inference thread, as a bug there would."""


async def test_readyz_and_the_gauge_agree_in_every_state(
    vae_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = copy_bundle(vae_bundle, tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not a graph")
    release = hold_loading(monkeypatch)
    app = create_app(make_settings(vae_bundle, models_dir=tmp_path.parent))
    holder = holder_of(app)
    async with client_of(app) as client:
        async with app.router.lifespan_context(app):
            assert await state(client) == (503, 0.0)  # loading
            release.set()
            await asyncio.wait_for(holder.first_load.wait(), 60)
            assert await state(client) == (200, 1.0)  # ready

            with pytest.raises(BundleError):
                await holder.load(broken)
            assert await state(client) == (200, 1.0)  # reload failed, the old model serves

            model = holder.current
            assert model is not None

            def crash(batch: np.ndarray, with_map: bool) -> dict[str, np.ndarray]:
                raise Crash

            model.batcher.infer = crash
            scored = await client.post("/score", files=files(("a.png", encode(blob()))))
            assert scored.status_code == 503
            assert await state(client) == (503, 0.0)  # the inference thread is dead

            await holder.load(vae_bundle)  # a reload brings the service back
            assert await state(client) == (200, 1.0)
        assert await state(client) == (503, 0.0)  # shut down


async def test_a_failed_first_load_is_not_ready(vae_bundle: Path, tmp_path: Path) -> None:
    broken = copy_bundle(vae_bundle, tmp_path / "broken")
    (broken / "manifest.json").write_text("{}")
    app = create_app(make_settings(broken))
    async with client_of(app) as client, app.router.lifespan_context(app):
        await asyncio.wait_for(holder_of(app).first_load.wait(), 60)
        assert await state(client) == (503, 0.0)
        reason = (await client.get("/readyz")).json()["error"]["message"]
        assert "failed" in reason and "broken" in reason
