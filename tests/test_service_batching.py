"""Dynamic batching: batch formation, draining, batching off, and equality with unbatched scoring."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from test_service_support import (
    encode,
    files,
    make_settings,
    metric,
    metric_samples,
    noise,
    serving,
)

from vigil.core.bundle import load_bundle
from vigil.core.preprocess import decode_image, image_to_array
from vigil.core.runtime import create_session, run
from vigil.service.batching import Batcher, BatcherClosed, InferenceFailed, Outputs

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class FakeModel:
    """An `infer` that doubles the input and records batch sizes (optionally blocking)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray, with_map: bool) -> Outputs:
        self.gate.wait(10)
        self.sizes.append(len(batch))
        out = {"score": batch.reshape(len(batch), -1).sum(1)}
        if with_map:
            out["error_map"] = batch * 2
        return out


def image(value: float) -> np.ndarray:
    return np.full((1, 2, 2), value, np.float32)


async def test_batches_fill_up_to_max_batch() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=8, max_wait_s=5.0)  # a long wait: only max_batch triggers
    batcher.start()
    rows = await asyncio.wait_for(
        asyncio.gather(*(batcher.score([image(i)]) for i in range(16))), 5
    )
    assert fake.sizes == [8, 8]
    for i, [(outputs, index)] in enumerate(rows):
        assert outputs["score"][index] == 4 * i
    await batcher.close()


async def test_max_wait_sends_a_partial_batch() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=64, max_wait_s=0.01)
    batcher.start()
    rows = await asyncio.wait_for(batcher.score([image(1), image(2), image(3)]), 5)
    assert fake.sizes == [3]
    assert [int(out["score"][i]) for out, i in rows] == [4, 8, 12]
    await batcher.close()


async def test_batches_form_while_the_model_is_busy() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=32, max_wait_s=0.0)  # no waiting at all
    batcher.start()
    fake.gate.clear()
    first = asyncio.ensure_future(batcher.score([image(0)]))
    await asyncio.sleep(0.05)  # the first batch is now blocked in the inference thread
    rest = [asyncio.ensure_future(batcher.score([image(i)])) for i in range(1, 11)]
    await asyncio.sleep(0.01)
    fake.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert fake.sizes == [1, 10]
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=4, max_wait_s=10.0)
    batcher.start()
    pending = [asyncio.ensure_future(batcher.score([image(i)])) for i in range(6)]
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.close(), 5)
    assert all(p.done() and not p.exception() for p in pending)
    assert sum(fake.sizes) == 6
    with pytest.raises(BatcherClosed):
        await batcher.score([image(0)])


async def test_heatmap_outputs_only_when_asked() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=4, max_wait_s=0.0)
    batcher.start()
    [(outputs, _)] = await batcher.score([image(1)])
    assert "error_map" not in outputs
    [(outputs, index)] = await batcher.score([image(1)], with_map=True)
    assert outputs["error_map"][index].max() == 2
    await batcher.close()


async def test_an_inference_error_fails_its_batch_only() -> None:
    """ONNX Runtime raising on a batch: its images get InferenceFailed, the next batch runs."""
    model = FakeModel()
    calls = 0

    def fails_once(batch: np.ndarray, with_map: bool) -> Outputs:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("graph failed")
        return model(batch, with_map)

    batcher = Batcher(fails_once, max_batch=4, max_wait_s=0.05)
    batcher.start()
    results = await asyncio.gather(
        *(batcher.score([image(i)]) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, InferenceFailed) for r in results), results
    assert all(r.code == "inference_failed" for r in results if isinstance(r, InferenceFailed))
    assert len(await batcher.score([image(1)])) == 1  # the thread lives on
    assert not batcher.failed
    await batcher.close()


async def test_a_crashed_inference_thread_fails_waiters_instead_of_hanging() -> None:
    class Crash(BaseException):
        pass

    def crash(batch: np.ndarray, with_map: bool) -> Outputs:
        raise Crash

    batcher = Batcher(crash, max_batch=2)
    batcher.start()
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.score([image(i)]) for i in range(3)), return_exceptions=True), 5
    )
    assert all(isinstance(r, BatcherClosed) for r in results)
    with pytest.raises(BatcherClosed):
        await batcher.score([image(0)])
    await asyncio.wait_for(batcher.close(), 5)


async def test_batching_off_runs_each_request_directly() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=4, enabled=False, max_request=10)
    assert batcher.shapes == range(1, 5)
    batcher.start()
    rows = await batcher.score([image(i) for i in range(6)])
    assert fake.sizes == [4, 2]  # one request, chunked at max_batch
    assert [int(out["score"][i]) for out, i in rows] == [0, 4, 8, 12, 16, 20]
    await batcher.close()


def test_warm_up_runs_every_shape_or_the_largest_and_smallest() -> None:
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=5)
    batcher.warm_up(image(0.5))
    assert fake.sizes == [1, 2, 3, 4, 5, 5]  # then the largest once more, timed for admission
    assert batcher.warmed == [1, 2, 3, 4, 5]
    assert batcher.admission.seconds_per_image > 0
    fake.sizes.clear()
    batcher.warm_up(image(0.5), every_shape=False)
    assert fake.sizes == [5, 1, 5]
    assert batcher.warmed == [5, 1]


async def test_concurrent_requests_batch_and_match_unbatched(vae_bundle: Path) -> None:
    """64 concurrent single-image requests: batched results equal scoring each image alone."""
    manifest, model_path = load_bundle(vae_bundle)
    uploads = [encode(noise(seed=i)) for i in range(64)]
    session = create_session(model_path, ["CPUExecutionProvider"], intra_op_threads=1)
    alone = [
        run(
            session,
            image_to_array(decode_image(data, 10**6), manifest.input)[None],
            manifest.scores,
        )
        for data in uploads
    ]
    settings = make_settings(vae_bundle, max_batch=16, max_wait_ms=20.0)
    async with serving(settings) as (_, client):
        responses = await asyncio.gather(
            *(
                client.post("/score", files=files((f"{i}.png", data)))
                for i, data in enumerate(uploads)
            )
        )
        samples = metric_samples((await client.get("/metrics")).text)
    assert all(r.status_code == 200 for r in responses)
    for response, expected in zip(responses, alone, strict=True):
        (result,) = response.json()["results"]
        for name in manifest.scores:
            # bit for bit: the graph is batch-invariant (training.scores.packed_rows)
            assert result["scores"][name] == float(expected[name][0]), name
    batches = metric(samples, "vigil_batch_size_count")
    assert metric(samples, "vigil_batch_size_sum") == 64
    assert batches < 64
    assert metric(samples, "vigil_batch_size_bucket", le="1.0") < batches  # batches of > 1 image
    assert metric(samples, "vigil_queue_wait_seconds_count") == 64
    assert metric(samples, "vigil_inference_seconds_count") == batches


async def test_batching_off_gives_the_same_answers(vae_bundle: Path) -> None:
    uploads = [(f"{i}.png", encode(noise(seed=i))) for i in range(5)]
    answers = []
    for batching in (True, False):
        async with serving(make_settings(vae_bundle, batching=batching, max_batch=4)) as (
            _,
            client,
        ):
            response = await client.post("/score", files=files(*uploads))
            assert response.status_code == 200
            answers.append([r["scores"] for r in response.json()["results"]])
    for batched, direct in zip(*answers, strict=True):
        for name, value in batched.items():
            assert value == direct[name], name
