"""Overload: admission control refuses at once (503 `overloaded` with Retry-After, counted),
and every request gets exactly one answer.

The model is held still by a gate (an `infer` that blocks until opened), so which request
is admitted and which refused depends on counts alone, never on timing: a refusal that
arrives while the gate is still closed was answered without waiting for the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_service_support import (
    blob,
    encode,
    files,
    holder_of,
    make_settings,
    metric,
    metric_samples,
    serving,
)

from vigil.service.admission import LATENCY_BUDGET, QUEUE_FULL, Admission, Overloaded
from vigil.service.batching import Batcher, Outputs

pytestmark = pytest.mark.anyio

GOOD = encode(blob())
Infer = Callable[[np.ndarray, bool], Outputs]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Gate:
    """Wraps an `infer`: each call says it has started, then blocks until the gate opens."""

    def __init__(self, infer: Infer) -> None:
        self.infer = infer
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray, with_map: bool) -> Outputs:
        self.entered.set()
        if not self.opened.wait(30):
            raise TimeoutError("the test never opened the gate")
        self.sizes.append(len(batch))
        return self.infer(batch, with_map)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "no batch reached the model"


def doubled(batch: np.ndarray, with_map: bool) -> Outputs:
    return {"score": batch.reshape(len(batch), -1).sum(1) * 2}


def image(value: float) -> np.ndarray:
    return np.full((1, 2, 2), value, np.float32)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the event loop (the requests in flight progress meanwhile)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def done(tasks: Sequence[asyncio.Future[httpx.Response]]) -> int:
    return sum(t.done() for t in tasks)


# -- the limits alone ----------------------------------------------------------------------


def test_nothing_ahead_is_always_admitted() -> None:
    admission = Admission(max_queue=1, budget_s=0.001)
    admission.seconds_per_image = 1.0
    admission.check(0, 1000)  # larger than both limits, but it would run alone


def test_the_queue_bound() -> None:
    admission = Admission(max_queue=3)
    admission.check(2, 1)
    with pytest.raises(Overloaded) as refused:
        admission.check(3, 1)
    assert refused.value.reason == QUEUE_FULL
    assert refused.value.code == "overloaded"
    assert refused.value.retry_after_s == 1  # at least one second, in whole seconds


def test_the_latency_budget_uses_the_measured_time_per_image() -> None:
    admission = Admission(budget_s=0.005)
    admission.measured(10, 0.01)  # 1 ms per image
    admission.check(4, 1)  # 5 ms: within the budget
    with pytest.raises(Overloaded) as refused:
        admission.check(5, 1)  # 6 ms
    assert refused.value.reason == LATENCY_BUDGET
    assert "budget" in refused.value.message


def test_the_time_per_image_is_a_moving_average_weighed_by_images() -> None:
    admission = Admission()
    admission.measured(4, 0.004)
    assert admission.seconds_per_image == pytest.approx(0.001)
    admission.measured(1, 0.011)  # a one-image batch that stalled moves it little
    assert admission.seconds_per_image == pytest.approx((0.8 * 0.004 + 0.011) / (0.8 * 4 + 1))
    admission.measured(0, 1.0)  # nothing to learn from
    assert admission.seconds_per_image == pytest.approx((0.8 * 0.004 + 0.011) / (0.8 * 4 + 1))
    for _ in range(40):
        admission.measured(32, 0.032)
    assert admission.seconds_per_image == pytest.approx(0.001, rel=1e-3)  # it forgets


def test_retry_after_is_the_time_to_drain_the_queue() -> None:
    admission = Admission(max_queue=3)
    admission.seconds_per_image = 0.9
    with pytest.raises(Overloaded) as refused:
        admission.check(3, 1)
    assert refused.value.retry_after_s == 3  # ceil(3 x 0.9)


def test_zero_turns_the_limits_off() -> None:
    admission = Admission()
    admission.seconds_per_image = 1.0
    admission.check(10**6, 10**6)


# -- the batcher ---------------------------------------------------------------------------


class Refusals:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def observe_batch(self, size: int, waits: object, seconds: float) -> None:
        pass

    def observe_refusal(self, reason: str) -> None:
        self.reasons.append(reason)


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "batching off"])
async def test_the_batcher_refuses_past_its_queue_without_waiting(batching: bool) -> None:
    gate = Gate(doubled)
    refusals = Refusals()
    batcher = Batcher(
        gate, max_batch=2, enabled=batching, admission=Admission(max_queue=3), observer=refusals
    )
    batcher.start()
    first = asyncio.ensure_future(batcher.score([image(1)]))
    await gate.wait_entered()
    queued = [asyncio.ensure_future(batcher.score([image(i)])) for i in (2, 3)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        batcher.admit(1)
    with pytest.raises(Overloaded):
        await batcher.score([image(4)])  # refused while the model is still held
    assert refusals.reasons == [QUEUE_FULL, QUEUE_FULL]
    assert not first.done() and not any(q.done() for q in queued)
    gate.opened.set()
    rows = await asyncio.wait_for(asyncio.gather(first, *queued), 10)
    assert [float(out["score"][i]) for [(out, i)] in rows] == [8.0, 16.0, 24.0]
    await asyncio.wait_for(batcher.score([image(5)]), 10)  # the queue has drained
    await batcher.close()


async def test_a_batch_answered_is_no_longer_ahead_of_the_next_request() -> None:
    """The answer may reach its client, and the client's next request the batcher, before
    the inference thread takes its next batch: that request must find nothing ahead."""
    batcher = Batcher(doubled, max_batch=1, admission=Admission(max_queue=1))
    handed_over, resume = threading.Event(), threading.Event()
    call_soon = batcher._call_soon

    def hold_after_handing_over(callback: Callable[..., object], *args: object) -> None:
        # set before the hand-over: once it is scheduled, the loop may resume the test before
        # this thread runs another line (seen on a loaded machine)
        handed_over.set()
        call_soon(callback, *args)
        resume.wait(10)  # the inference thread stays here, its batch answered

    batcher._call_soon = hold_after_handing_over  # type: ignore[method-assign]
    batcher.start()
    try:
        await asyncio.wait_for(batcher.score([image(1)]), 10)
        assert handed_over.is_set()
        batcher.admit(1)  # used to raise Overloaded: the answered batch still counted
        assert batcher.backlog == 0
    finally:
        resume.set()
        batcher._call_soon = call_soon  # type: ignore[method-assign]
        await batcher.close()


# -- the service ---------------------------------------------------------------------------


def post(client: httpx.AsyncClient, count: int = 1) -> Awaitable[httpx.Response]:
    return client.post("/score", files=files(*[(f"{i}.png", GOOD) for i in range(count)]))


def assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "overloaded"
    assert set(response.json()) == {"error"}


async def test_overload_is_refused_at_once_counted_and_nothing_is_lost(vae_bundle: Path) -> None:
    """1 request in the model (max_queue 3), then 12 more: 2 fit the queue, the other 10
    are refused while the model is held; once it is released the 3 admitted are scored."""
    async with serving(make_settings(vae_bundle, max_batch=2, max_queue=3)) as (app, client):
        model = holder_of(app).current
        assert model is not None
        gate = Gate(model.batcher.infer)
        model.batcher.infer = gate
        first = asyncio.ensure_future(post(client))
        await gate.wait_entered()
        more = [asyncio.ensure_future(post(client)) for _ in range(12)]
        await until(lambda: done(more) == 10, "10 refusals")
        assert model.batcher.backlog == 3 and not first.done()
        refused = [t.result() for t in more if t.done()]
        for response in refused:
            assert_overloaded(response)
        gate.opened.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *more), 30)
        assert sorted(r.status_code for r in answers) == [200] * 3 + [503] * 10
        samples = metric_samples((await client.get("/metrics")).text)
    assert metric(samples, "vigil_overloaded_total", reason=QUEUE_FULL) == 10
    assert metric(samples, "vigil_overloaded_total", reason=LATENCY_BUDGET) == 0
    scored = {"route": "/score", "method": "POST"}
    assert metric(samples, "vigil_requests_total", **scored, status="503") == 10
    assert metric(samples, "vigil_requests_total", **scored, status="200") == 3
    assert metric(samples, "vigil_images_scored_total") == 3
    assert model.leases == 0  # every request returned its lease


async def test_the_latency_budget_refuses_what_would_be_late(vae_bundle: Path) -> None:
    settings = make_settings(vae_bundle, max_batch=2, max_queue=0, latency_budget_ms=50)
    async with serving(settings) as (app, client):
        model = holder_of(app).current
        assert model is not None
        gate = Gate(model.batcher.infer)
        model.batcher.infer = gate
        first = asyncio.ensure_future(post(client))
        await gate.wait_entered()
        model.batcher.admission.seconds_per_image = 0.02  # as if each image took 20 ms
        second = asyncio.ensure_future(post(client))  # 2 images to go: 40 ms, admitted
        await until(lambda: model.batcher.backlog == 2, "the second request in the queue")
        late = await post(client, 2)  # 4 images to go: 80 ms, refused
        assert_overloaded(late)
        assert "latency budget of 50 ms" in late.json()["error"]["message"]
        gate.opened.set()
        answers = await asyncio.wait_for(asyncio.gather(first, second), 30)
        assert [r.status_code for r in answers] == [200, 200]
        samples = metric_samples((await client.get("/metrics")).text)
    assert metric(samples, "vigil_overloaded_total", reason=LATENCY_BUDGET) == 1


async def test_an_overloaded_request_is_refused_before_its_body_is_read(
    vae_bundle: Path,
) -> None:
    """A full queue refuses even a malformed body: the body is never parsed."""
    async with serving(make_settings(vae_bundle, max_batch=1, max_queue=1)) as (app, client):
        model = holder_of(app).current
        assert model is not None
        gate = Gate(model.batcher.infer)
        model.batcher.infer = gate
        first = asyncio.ensure_future(post(client))
        await gate.wait_entered()
        body = b"--b\r\nnot a multipart body"
        headers = {"content-type": "multipart/form-data; boundary=b"}
        assert_overloaded(await client.post("/score", content=body, headers=headers))
        gate.opened.set()
        assert (await asyncio.wait_for(first, 30)).status_code == 200
        assert (await client.post("/score", content=body, headers=headers)).status_code == 400


async def test_a_request_larger_than_the_queue_runs_when_nothing_is_ahead(
    vae_bundle: Path,
) -> None:
    async with serving(make_settings(vae_bundle, max_batch=2, max_queue=2)) as (_, client):
        response = await post(client, 5)
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 5
