"""Admission control for a batcher: a bounded queue and a latency budget.

Past capacity, a queue that only grows makes every answer late: callers time out, retry
and add to the load. Instead, as Triton's queue policy (`max_queue_size`) and BentoML's
latency budget (`max_latency_ms`) do, a request the model cannot score in time is refused
at once, before it waits, with `Overloaded` (503 `overloaded` and `Retry-After`):

- the queue bound: its images and those ahead of it (queued, or in the running batch)
  would be more than `max_queue`;
- the latency budget: scoring them would take longer than `budget_s`, estimated from the
  seconds per image measured on recent batches.

A request is never refused while nothing is ahead of it, so one larger than either limit
still runs, alone; an idle model always makes progress. The batcher calls `check` under
its own lock, with the count it keeps there.
"""

from __future__ import annotations

import math

from vigil.core.errors import VigilError

# Each batch's weight in the time-per-image estimate decays by this much per later
# batch: the estimate follows a change of load (or of CPU left by neighbours) within
# about five batches. Batches weigh by their images, so a one-image batch that stalled
# (the thread preempted) cannot make the model look slow for all.
DECAY = 0.8
QUEUE_FULL = "queue_full"
LATENCY_BUDGET = "latency_budget"
REASONS = (QUEUE_FULL, LATENCY_BUDGET)


class Overloaded(VigilError):
    """The model cannot take these images in time now; retry after `retry_after_s`."""

    code = "overloaded"

    def __init__(self, message: str, reason: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Admission:
    """The limits of one batcher and its measured speed; 0 turns a limit off."""

    def __init__(self, max_queue: int = 0, budget_s: float = 0.0) -> None:
        self.max_queue = max_queue
        self.budget_s = budget_s
        # Written by the inference thread, read on the event loop: a float is swapped whole.
        self.seconds_per_image = 0.0
        self._seconds = 0.0  # decayed sums over recent batches (the inference thread's)
        self._images = 0.0

    def check(self, ahead: int, images: int) -> None:
        """Raise `Overloaded` unless `images` more, behind `ahead` admitted and not yet
        scored, fit both limits (always admitted when nothing is ahead)."""
        if ahead <= 0:
            return
        total = ahead + images
        if self.max_queue and total > self.max_queue:
            raise self._refuse(
                QUEUE_FULL,
                f"{ahead} images are waiting for the model and the queue holds "
                f"{self.max_queue}; retry",
                ahead,
            )
        expected = total * self.seconds_per_image
        if self.budget_s and expected > self.budget_s:
            raise self._refuse(
                LATENCY_BUDGET,
                f"the model would take {expected * 1000:.0f} ms to reach these images, over "
                f"the latency budget of {self.budget_s * 1000:.0f} ms; retry",
                ahead,
            )

    def measured(self, images: int, seconds: float) -> None:
        """A batch of `images` took `seconds` (warm-up runs included)."""
        if images <= 0 or not math.isfinite(seconds):
            return
        self._seconds = self._seconds * DECAY + seconds
        self._images = self._images * DECAY + images
        self.seconds_per_image = self._seconds / self._images

    def _refuse(self, reason: str, message: str, ahead: int) -> Overloaded:
        # Retry-After is whole seconds (RFC 9110); the queue ahead drains in about this long.
        drain = math.ceil(ahead * self.seconds_per_image)
        return Overloaded(message, reason, max(1, drain))
