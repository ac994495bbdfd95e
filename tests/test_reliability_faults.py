"""Injected faults: the answer a client gets, and proof that the service recovers.

(SIGTERM under load: test_reliability_drain.py; interrupted training and calibration:
test_reliability_bundles.py; a reload through a symlink out of the models folder:
test_service_reload.py, FAILED_RELOADS.)
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_service_support import (
    blob,
    copy_bundle,
    encode,
    files,
    hold_loading,
    holder_of,
    make_settings,
    metric,
    metric_samples,
    serving,
)

import vigil.service.model
from benchmarks.reliability.slow import slow_and_hanging_clients

pytestmark = pytest.mark.anyio
GOOD = encode(blob())
TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def assert_error_shape(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return str(body["error"]["message"])


async def ready(client: httpx.AsyncClient) -> tuple[int, float]:
    status = (await client.get("/readyz")).status_code
    return status, metric(metric_samples((await client.get("/metrics")).text), "vigil_ready")


async def test_onnx_runtime_failing_on_a_batch_fails_that_batch_only(vae_bundle: Path) -> None:
    settings = make_settings(vae_bundle, max_batch=4, max_wait_ms=50)
    async with serving(settings) as (app, client):
        model = holder_of(app).current
        assert model is not None
        real = model.batcher.infer
        calls: list[int] = []

        def second_call_fails(batch: np.ndarray, with_map: bool) -> dict[str, np.ndarray]:
            calls.append(len(batch))
            if len(calls) == 2:
                raise RuntimeError("injected: CUDA error 700 at /secret/path/kernel.cu")
            return real(batch, with_map)

        model.batcher.infer = second_call_fails
        answers = await asyncio.gather(
            *(client.post("/score", files=files((f"{i}.png", GOOD))) for i in range(12))
        )
        failed = [a for a in answers if a.status_code != 200]
        assert len(calls) >= 3 and len(failed) == calls[1]  # that batch's requests, no other
        for answer in failed:
            message = assert_error_shape(answer, 503, "inference_failed")
            assert "injected" not in message and "/secret" not in message  # no internals
        assert all(a.status_code == 200 for a in answers if a not in failed)
        again = await client.post("/score", files=files(("next.png", GOOD)))
        assert again.status_code == 200  # the next batch is scored
        assert await ready(client) == (200, 1.0)  # one bad batch is not a dead service


async def test_a_dead_inference_thread_is_not_ready_until_a_reload(vae_bundle: Path) -> None:
    class Crash(BaseException):
        """Not an Exception: it ends the inference thread, as a bug there would."""

    def crash(batch: np.ndarray, with_map: bool) -> dict[str, np.ndarray]:
        raise Crash

    settings = make_settings(vae_bundle, admin_token=TOKEN, max_batch=2)
    async with serving(settings) as (app, client):
        holder_of(app).current.batcher.infer = crash  # type: ignore[union-attr]
        scored = await client.post("/score", files=files(("a.png", GOOD)))
        assert "inference thread stopped" in assert_error_shape(scored, 503, "not_ready")
        assert await ready(client) == (503, 0.0)
        later = await client.post("/score", files=files(("b.png", GOOD)))
        assert_error_shape(later, 503, "not_ready")  # fails fast, does not hang
        reloaded = await client.post("/admin/reload", headers=AUTH)
        assert reloaded.status_code == 200, reloaded.text
        assert await ready(client) == (200, 1.0)
        assert (await client.post("/score", files=files(("c.png", GOOD)))).status_code == 200


async def test_concurrent_reloads_run_one_at_a_time(
    vae_bundle: Path, rgb_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two POST /admin/reload and a SIGHUP at once: the loads run one after the other (one
    model in memory beside the serving one, never three), and each swap is whole."""
    models = tmp_path / "models"
    copy_bundle(vae_bundle, models / "a")
    copy_bundle(rgb_bundle, models / "b")
    settings = make_settings(models / "a", admin_token=TOKEN, models_dir=models, max_batch=2)
    async with serving(settings) as (app, client):
        release = hold_loading(monkeypatch)
        active, most = 0, 0
        lock = threading.Lock()
        held = vigil.service.model.load_model

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal active, most
            with lock:
                active += 1
                most = max(most, active)
            try:
                return held(*args, **kwargs)
            finally:
                with lock:
                    active -= 1

        monkeypatch.setattr(vigil.service.model, "load_model", counted)
        to_b = asyncio.ensure_future(client.post("/admin/reload", json={"bundle": "b"}, headers=AUTH))  # fmt: skip
        to_a = asyncio.ensure_future(client.post("/admin/reload", json={"bundle": "a"}, headers=AUTH))  # fmt: skip
        await asyncio.sleep(0.2)
        app.state.lifespan.spawn_reload()  # SIGHUP's handler
        assert (await client.post("/score", files=files(("x.png", GOOD)))).status_code == 200
        release.set()
        first, second = await asyncio.wait_for(asyncio.gather(to_b, to_a), 120)
        await asyncio.wait_for(asyncio.gather(*app.state.lifespan.tasks), 120)
        assert first.status_code == second.status_code == 200
        assert most == 1
        samples = metric_samples((await client.get("/metrics")).text)
        assert metric(samples, "vigil_reloads_total", outcome="success") == 3
        assert (await client.get("/readyz")).json()["model"]["name"] in {"vae", "rgb-vae"}


@pytest.mark.slow
def test_slow_and_vanishing_clients_hold_no_one_back(vae_bundle: Path, tmp_path: Path) -> None:
    seen = slow_and_hanging_clients(vae_bundle, tmp_path, slow=4, hangups=20, requests=400)
    assert seen["ordinary"] == {"200": 400}, seen
    assert all(s == {"status": 200, "mid_body_when_load_ended": True} for s in seen["slow"])
    assert seen["server_score_200"] == 404  # the 400 ordinary and the 4 slow ones
    assert seen["server_score_400"] == 20  # each hang-up: its own request, client_disconnected
    assert seen["server_5xx"] == 0 and not seen["log_has_traceback"]
