"""Dynamic batching: concurrent requests' images share one ONNX Runtime call.

In the spirit of Triton's dynamic batcher: an image waits in a queue until `max_batch`
images are queued or the oldest has waited `max_wait_s`, whichever comes first; then one
`session.run` scores them all. The inference thread forms the batches itself: as soon as
a call returns, it takes what queued meanwhile and starts the next, without waiting for
the event loop, which may be busy answering the previous batch. Results go back to the
event loop in one callback per batch. Under load, batches fill without any deliberate
wait: hence the default wait of 0, also Triton's (BENCHMARKS.md has the measurements).
With batching off, each request's images run as they come (in chunks of at most
`max_batch`), still off the event loop. Either way, `admission` bounds what may wait:
a request that would overflow the queue or the latency budget is refused at once
(`admission.Overloaded`), never queued to be answered late.

The graph scores each image independently and is exported batch-invariant (see
`training.scores.packed_rows`), so on the CPU provider a batched result equals the
unbatched one bit for bit (the tests assert it). On CUDA, cuDNN may pick convolution
algorithms per batch shape: expect agreement to float precision there (unmeasured).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vigil.core.errors import VigilError
from vigil.service.admission import Admission, Overloaded

log = logging.getLogger("vigil.batching")

Outputs = dict[str, np.ndarray]
# A scored image: the outputs of the batch it ran in, and its row in that batch.
Row = tuple[Outputs, int]
# (batch [N, C, H, W] float32, whether the error map is wanted) -> graph outputs.
InferFn = Callable[[np.ndarray, bool], Outputs]


class BatchObserver(Protocol):
    def observe_batch(self, size: int, waits: Iterable[float], seconds: float) -> None: ...

    def observe_refusal(self, reason: str) -> None: ...


class BatcherClosed(VigilError):
    """The batcher was closed (the model was unloaded); the image was not scored."""

    code = "not_ready"


class InferenceFailed(VigilError):
    """ONNX Runtime raised on the batch this image was in; the next batch is scored."""

    code = "inference_failed"


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
        admission: Admission | None = None,
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
        self.admission = admission if admission is not None else Admission()
        # Shared with the inference thread, under `_ready`'s lock.
        self._pending: deque[_Item] = deque()
        self._running = 0  # images in the batch the inference thread is scoring
        self._direct_images = 0  # batching off: images admitted and not yet scored
        self._ready = threading.Condition(threading.Lock())
        self._closing = False
        self._crashed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._executor: ThreadPoolExecutor | None = None  # batching off
        self.warmed: list[int] = []  # the batch sizes `warm_up` ran

    @property
    def failed(self) -> bool:
        """Whether the inference thread died (a bug): nothing will be scored any more."""
        return self._crashed

    @property
    def shapes(self) -> range:
        """Every batch size this batcher can send to the session."""
        largest = self.max_batch
        if not self.enabled and self.max_request is not None:
            largest = min(largest, self.max_request)
        return range(1, largest + 1)

    def warm_up(self, example: np.ndarray, every_shape: bool = True) -> None:
        """Run batch shapes once (blocking), maps included: first runs pay for allocation
        and, on CUDA, for cuDNN's algorithm search, which must not land on a request.

        `every_shape=False` runs the largest and the smallest only: enough where a new
        shape's first run only allocates (ONNX Runtime's CPU provider: the largest run
        leaves its memory arena big enough for every other; BENCHMARKS.md, cold start).
        """
        largest = self.shapes[-1]
        sizes = list(self.shapes) if every_shape else sorted({largest, 1}, reverse=True)
        for size in sizes:
            self._run_example(example, size)
        self.warmed = sizes
        started = time.perf_counter()  # once more, warm: admission's first time per image
        self._run_example(example, largest)
        self.admission.measured(largest, time.perf_counter() - started)

    def _run_example(self, example: np.ndarray, size: int) -> None:
        self.infer(np.ascontiguousarray(np.broadcast_to(example, (size, *example.shape))), True)

    def start(self) -> None:
        """Start the inference thread; call on the event loop that will await the scores."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.enabled:
            self._stopped = self._loop.create_future()
            threading.Thread(
                target=self._work, name=f"vigil-infer-{self.name}", daemon=True
            ).start()
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"vigil-infer-{self.name}")

    async def close(self) -> None:
        """Stop taking images, finish every queued one, then stop the thread."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    @property
    def backlog(self) -> int:
        """Images admitted and not yet scored: queued, or in the running batch."""
        if not self.enabled:
            return self._direct_images
        with self._ready:
            return len(self._pending) + self._running

    def admit(self, images: int = 1) -> None:
        """Raise `Overloaded` if `images` more would be refused now. With 1, the least a
        request brings, before its body is read: refused then, it costs the least."""
        self._check(self.backlog, images)

    def _check(self, ahead: int, images: int) -> None:
        try:
            self.admission.check(ahead, images)
        except Overloaded as exc:
            if self.observer is not None:
                self.observer.observe_refusal(exc.reason)
            raise

    async def score(self, arrays: Sequence[np.ndarray], with_map: bool = False) -> list[Row]:
        """Score images [C, H, W] float32; one row per image, in order.

        `Overloaded` (nothing queued) when the images do not fit the admission limits."""
        loop = self._loop
        if self._closing or loop is None:
            raise BatcherClosed(f"the model {self.name} is being unloaded; retry")
        if not self.enabled:
            return await self._direct(loop, arrays, with_map)
        now = time.perf_counter()
        futures: list[asyncio.Future[Row]] = [loop.create_future() for _ in arrays]
        with self._ready:
            if self._closing:  # checked under the lock: the thread may have just stopped
                raise BatcherClosed(f"the model {self.name} is being unloaded; retry")
            self._check(len(self._pending) + self._running, len(arrays))
            self._pending.extend(
                _Item(array, with_map, future, now)
                for array, future in zip(arrays, futures, strict=True)
            )
            self._ready.notify()
        if len(futures) == 1:
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    # -- the inference thread ---------------------------------------------------------------

    def _work(self) -> None:
        items: list[_Item] | None = None
        try:
            while (items := self._next_batch()) is not None:
                self._execute(items)
        except BaseException:  # a bug, not a bad batch (`_execute` answers those): stop serving
            log.exception("the inference thread of %s stopped", self.name)
            with self._ready:
                self._closing = self._crashed = True
                left = [*(items or []), *self._pending]
                self._pending.clear()
            self._call_soon(self._fail, left, BatcherClosed("the inference thread stopped"))
        finally:
            if self._stopped is not None:
                self._call_soon(_resolve, self._stopped)

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch is due; None once closing and drained."""
        with self._ready:
            while not self._pending:
                if self._closing:
                    return None
                self._ready.wait()
            if self.max_wait_s:
                deadline = self._pending[0].queued + self.max_wait_s
                while len(self._pending) < self.max_batch and not self._closing:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
            count = self._running = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(count)]

    def _execute(self, items: list[_Item]) -> None:
        # A cancelled request (client gone) needs no row. Reading a future's state from this
        # thread is a benign race: at worst a row is computed for nobody.
        items = [item for item in items if not item.future.cancelled()]
        if not items:
            self._scored()
            return
        try:
            outputs, started, seconds = self._run(
                [item.array for item in items], any(item.with_map for item in items)
            )
        except Exception as exc:
            self._scored()
            self._call_soon(self._fail, items, _failed(exc, len(items)))
            return
        self._scored()
        self._call_soon(self._deliver, items, outputs, started, seconds)

    def _scored(self) -> None:
        # Before the answers go out: a client answered at once may send its next request
        # before this thread takes the next batch, and must not find its own batch ahead.
        with self._ready:
            self._running = 0

    def _call_soon(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    # -- back on the event loop ---------------------------------------------------------------

    def _deliver(
        self, items: list[_Item], outputs: Outputs, started: float, seconds: float
    ) -> None:
        for index, item in enumerate(items):
            if not item.future.done():
                item.future.set_result((outputs, index))
        if self.observer is not None:
            self.observer.observe_batch(
                len(items), [started - item.queued for item in items], seconds
            )

    @staticmethod
    def _fail(items: list[_Item], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    async def _direct(
        self, loop: asyncio.AbstractEventLoop, arrays: Sequence[np.ndarray], with_map: bool
    ) -> list[Row]:
        self._check(self._direct_images, len(arrays))
        self._direct_images += len(arrays)
        try:
            return await self._run_chunks(loop, arrays, with_map)
        finally:
            self._direct_images -= len(arrays)

    async def _run_chunks(
        self, loop: asyncio.AbstractEventLoop, arrays: Sequence[np.ndarray], with_map: bool
    ) -> list[Row]:
        rows: list[Row] = []
        for start in range(0, len(arrays), self.max_batch):
            if self._closing:  # closed between two chunks of this request
                raise BatcherClosed(f"the model {self.name} is being unloaded; retry")
            chunk = list(arrays[start : start + self.max_batch])
            queued = time.perf_counter()
            try:
                outputs, started, seconds = await loop.run_in_executor(
                    self._executor, self._run, chunk, with_map
                )
            except Exception as exc:
                raise _failed(exc, len(chunk)) from exc
            rows.extend((outputs, i) for i in range(len(chunk)))
            if self.observer is not None:
                self.observer.observe_batch(len(chunk), [started - queued] * len(chunk), seconds)
        return rows

    def _run(self, arrays: list[np.ndarray], with_map: bool) -> tuple[Outputs, float, float]:
        """In the inference thread: stack the images and make one session call."""
        started = time.perf_counter()
        batch = np.stack(arrays) if len(arrays) > 1 else arrays[0][None]
        outputs = self.infer(batch, with_map)
        seconds = time.perf_counter() - started
        self.admission.measured(len(arrays), seconds)
        return outputs, started, seconds


def _failed(exc: Exception, images: int) -> InferenceFailed:
    """What the requests of a batch that ONNX Runtime failed on get (the error is logged)."""
    log.error("ONNX Runtime failed on a batch of %d images", images, exc_info=exc)
    return InferenceFailed(f"scoring failed ({type(exc).__name__}, logged); retry")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
