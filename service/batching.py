"""Dynamic batching: concurrent requests' images share one ONNX Runtime call.

In the spirit of Triton's dynamic batcher: an image waits in a queue until `max_batch`
images are queued or the oldest has waited `max_wait_s`, whichever comes first; then
one `session.run` scores them all in a dedicated inference thread, and each request's
future is resolved back on the event loop. While a batch runs, new images queue up, so
under load batches fill without any deliberate wait: hence the default wait of 0 (also
Triton's), which on CPU was as fast or faster at every concurrency and 3x faster for a
lone client (see service.settings). With batching off, each request's images run as they
come (in chunks of at most `max_batch`), still off the event loop.

The graph scores each image independently and is exported batch-invariant (see
`training.scores.packed_rows`), so a batched result equals the unbatched one bit for bit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger("vigil.batching")

Outputs = dict[str, np.ndarray]
# A scored image: the outputs of the batch it ran in, and its row in that batch.
Row = tuple[Outputs, int]
# (batch [N, C, H, W] float32, whether the error map is wanted) -> graph outputs.
InferFn = Callable[[np.ndarray, bool], Outputs]


class BatchObserver(Protocol):
    def observe_batch(self, size: int, waits: Iterable[float], seconds: float) -> None: ...


class BatcherClosed(RuntimeError):
    """The batcher was closed (the model was unloaded); the image was not scored."""


@dataclass(slots=True)
class _Item:
    array: np.ndarray
    with_map: bool
    future: asyncio.Future[Row]
    queued: float


class Batcher:
    """Gathers images from concurrent requests into batches for one model."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        enabled: bool = True,
        max_request: int | None = None,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.enabled = enabled
        # Without batching, the largest call is one request's images (chunked at max_batch).
        self.max_request = max_request
        self.observer = observer
        self.name = name
        self._pending: list[_Item] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_len = 1
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def shapes(self) -> range:
        """Every batch size this batcher can send to the session."""
        largest = self.max_batch
        if not self.enabled and self.max_request is not None:
            largest = min(largest, self.max_request)
        return range(1, largest + 1)

    def warm_up(self, example: np.ndarray) -> None:
        """Run every batch shape once (blocking): first runs pay for allocation and, on
        CUDA, for cuDNN's algorithm search, which must not land on a request."""
        for size in self.shapes:
            batch = np.ascontiguousarray(np.broadcast_to(example, (size, *example.shape)))
            self.infer(batch, True)

    def start(self) -> None:
        """Start the inference thread (and the batching task); call on the event loop."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"vigil-infer-{self.name}")
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"vigil-batcher-{self.name}"
            )
            self._task.add_done_callback(_log_crash)

    async def close(self) -> None:
        """Stop taking images, finish every queued one, then stop the thread."""
        if self._closing:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closing = True
        self._notify()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def score(self, arrays: Sequence[np.ndarray], with_map: bool = False) -> list[Row]:
        """Score images [C, H, W] float32; one row per image, in order."""
        if self._closing or self._executor is None:
            raise BatcherClosed(f"the batcher of {self.name} is not running")
        if not self.enabled:
            return await self._direct(arrays, with_map)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = []
        for array in arrays:
            future: asyncio.Future[Row] = loop.create_future()
            self._pending.append(_Item(array, with_map, future, now))
            futures.append(future)
        self._notify()
        if len(futures) == 1:
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    # -- internals ------------------------------------------------------------------------

    def _notify(self) -> None:
        wakeup = self._wakeup
        if (
            wakeup is not None
            and not wakeup.done()
            and (self._closing or len(self._pending) >= self._wake_len)
        ):
            wakeup.set_result(None)

    async def _wait(self, until_len: int, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        self._wakeup, self._wake_len = wakeup, until_len
        timer = loop.call_later(timeout, _resolve, wakeup) if timeout is not None else None
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wait(1, None)
                continue
            if not self._closing and len(self._pending) < self.max_batch and self.max_wait_s:
                delay = self._pending[0].queued + self.max_wait_s - time.perf_counter()
                if delay > 0:
                    await self._wait(self.max_batch, delay)
            items = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            items = [item for item in items if not item.future.done()]  # cancelled requests
            if items:
                await self._execute(items)

    async def _execute(self, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        arrays = [item.array for item in items]
        with_map = any(item.with_map for item in items)
        try:
            outputs, started, seconds = await loop.run_in_executor(
                self._executor, self._run, arrays, with_map
            )
        except Exception as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for index, item in enumerate(items):
            if not item.future.done():
                item.future.set_result((outputs, index))
        if self.observer is not None:
            self.observer.observe_batch(
                len(items), [started - item.queued for item in items], seconds
            )

    async def _direct(self, arrays: Sequence[np.ndarray], with_map: bool) -> list[Row]:
        loop = asyncio.get_running_loop()
        rows: list[Row] = []
        for start in range(0, len(arrays), self.max_batch):
            chunk = list(arrays[start : start + self.max_batch])
            queued = time.perf_counter()
            outputs, started, seconds = await loop.run_in_executor(
                self._executor, self._run, chunk, with_map
            )
            rows.extend((outputs, i) for i in range(len(chunk)))
            if self.observer is not None:
                self.observer.observe_batch(len(chunk), [started - queued] * len(chunk), seconds)
        return rows

    def _run(self, arrays: list[np.ndarray], with_map: bool) -> tuple[Outputs, float, float]:
        """In the inference thread: stack the images and make one session call."""
        started = time.perf_counter()
        batch = np.stack(arrays) if len(arrays) > 1 else arrays[0][None]
        outputs = self.infer(batch, with_map)
        return outputs, started, time.perf_counter() - started


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the batching task stopped", exc_info=task.exception())
