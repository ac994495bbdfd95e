"""An open-loop HTTP load generator: requests arrive at a set rate whatever the answers do.

`hey -q` and `wrk` are closed loops: a worker sends its next request only when the last is
answered (`hey -q` also fires all its workers on the same tick, in bursts). Overload needs
arrivals that do not wait: here they are a Poisson process at `rate` per second, each sent
on an idle keep-alive connection (a new one opened when none is idle, up to `connections`;
past that it waits for one). Latency counts from the arrival's scheduled time, so a client
that falls behind shows as latency rather than hiding it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np

try:
    import uvloop
except ImportError:  # plain asyncio works, with more CPU per request
    uvloop = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no answer (the connection failed or timed out)
    latency_s: float
    arrival_s: float  # scheduled arrival, from the start of the run


class Client:
    def __init__(self, port: int, request: bytes, connections: int, timeout_s: float) -> None:
        self.port = port
        self.request = request
        self.limit = asyncio.Semaphore(connections)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.timeout_s = timeout_s

    async def send(self, scheduled: float, origin: float) -> Answer:
        async with self.limit:
            status = 0
            with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                status = await asyncio.wait_for(self._exchange(), self.timeout_s)
            return Answer(status, time.perf_counter() - scheduled, scheduled - origin)

    async def _exchange(self) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def post(path: str, content_type: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def _run(
    port: int, request: bytes, rate: float, seconds: float, connections: int, seed: int
) -> list[Answer]:
    client = Client(port, request, connections, timeout_s=30)
    gaps = np.random.default_rng(seed).exponential(1 / rate, int(rate * seconds * 2) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    origin = time.perf_counter()
    tasks = []
    for at in arrivals:
        delay = origin + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(client.send(origin + at, origin)))
    answers = await asyncio.gather(*tasks)
    client.close()
    return list(answers)


def run(
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    connections: int = 512,
    seed: int = 0,
) -> list[Answer]:
    """Send `request` (raw HTTP/1.1 bytes) at `rate` per second for `seconds`; every answer."""
    coroutine = _run(port, request, rate, seconds, connections, seed)
    if uvloop is not None:
        return uvloop.run(coroutine)
    return asyncio.run(coroutine)
