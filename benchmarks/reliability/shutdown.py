"""SIGTERM under load from keep-alive clients: who was answered, who was not, how long it took.

`concurrency` clients each keep a connection open and send one-image /score requests back
to back, reopening their connection when an answer says `Connection: close` and stopping
when a connection is refused (the listener is closed). Once the load runs, the server gets
SIGTERM; a prober asks /readyz on fresh connections meanwhile. What a correct drain gives:
/readyz 503 at once while /score is still answered; every answer after the signal says
`Connection: close`; no request sent on an open connection goes unanswered; the process
exits within VIGIL_SHUTDOWN_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.reliability.catalogue import form, png, score, test_images
from benchmarks.reliability.client import Connection, Fate, request
from benchmarks.reliability.server import Server, start


@dataclass
class Tally:
    signalled: float | None = None  # time.monotonic() of the SIGTERM
    before: int = 0  # answered before the signal
    after: int = 0  # answered after it
    after_without_close: int = 0  # answered after it without Connection: close
    statuses_after: Counter[int] = field(default_factory=Counter)
    fates: Counter[str] = field(default_factory=Counter)  # fate (reused/new) -> count
    readyz: list[tuple[float, int | str]] = field(default_factory=list)
    score_ok_while_unready: bool = False


async def _client(port: int, raw: bytes, tally: Tally, stop: asyncio.Event) -> None:
    conn = Connection(port, timeout=60)
    try:
        while not stop.is_set():
            result = await conn.send(raw)
            now = time.monotonic()
            if result.fate is not Fate.ANSWERED:
                tally.fates[f"{result.fate.value} ({'kept-alive' if result.reused else 'new'} connection)"] += 1  # fmt: skip
                if result.fate is Fate.REFUSED:
                    return  # the listener is closed: the server is going away
                continue
            assert result.answer is not None
            if tally.signalled is None:
                tally.before += 1
                continue
            tally.after += 1
            tally.statuses_after[result.answer.status] += 1
            # an answer already on its way when the signal came may lack the header
            if not result.answer.closes and now - tally.signalled > 0.05:
                tally.after_without_close += 1
            if result.answer.status == 200 and any(s == 503 for _, s in tally.readyz):
                tally.score_ok_while_unready = True
    finally:
        await conn.close()


async def _probe_readiness(port: int, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        conn = Connection(port, timeout=10)
        result = await conn.send(request("GET", "/readyz", headers={"Connection": "close"}))
        await conn.close()
        since = time.monotonic() - (tally.signalled or 0)
        answer = result.answer.status if result.answer is not None else result.fate.value
        tally.readyz.append((round(since, 3), answer))
        if result.fate is Fate.REFUSED:
            return
        await asyncio.sleep(0.05)


async def _run(
    server: Server, concurrency: int, load_s: float, limit_s: float
) -> tuple[Tally, float]:
    raw = score(form([("a.png", png(test_images(1)[0]))]))
    tally = Tally()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(_client(server.port, raw, tally, stop)) for _ in range(concurrency)
    ]
    await asyncio.sleep(load_s)  # the load runs; every client holds a kept-alive connection
    tally.signalled = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    prober = asyncio.create_task(_probe_readiness(server.port, tally, stop))
    deadline = tally.signalled + limit_s
    while server.process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    exit_s = time.monotonic() - tally.signalled
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients, prober, return_exceptions=True), 30)
    return tally, exit_s


def sigterm_under_load(
    bundle: Path,
    workdir: Path,
    concurrency: int = 32,
    drain_s: float = 2.0,
    shutdown_timeout_s: int = 10,
    load_s: float = 2.0,
) -> dict[str, Any]:
    """One try: start a server, load it, SIGTERM it; what the clients saw."""
    env = {"VIGIL_DRAIN_S": str(drain_s), "VIGIL_SHUTDOWN_TIMEOUT_S": str(shutdown_timeout_s)}
    server = start(bundle, workdir / "sigterm.log", env)
    try:
        tally, exit_s = asyncio.run(_run(server, concurrency, load_s, shutdown_timeout_s + 30))
    finally:
        returncode = server.stop(signal.SIGKILL)
    lost = {k: v for k, v in tally.fates.items() if not k.startswith("refused")}
    first_readyz = tally.readyz[0] if tally.readyz else None
    return {
        "concurrency": concurrency,
        "drain_s": drain_s,
        "shutdown_timeout_s": shutdown_timeout_s,
        "answered_before_sigterm": tally.before,
        "answered_after_sigterm": tally.after,
        "statuses_after_sigterm": dict(tally.statuses_after),
        "answered_after_without_connection_close": tally.after_without_close,
        "not_answered": lost,
        "not_answered_total": sum(lost.values()),
        "refused_after_listener_closed": sum(v for k, v in tally.fates.items() if k.startswith("refused")),
        "first_readyz_after_sigterm": first_readyz,
        "score_answered_while_readyz_503": tally.score_ok_while_unready,
        "exit_s": round(exit_s, 3),
        "returncode": returncode,
        "log": server.log.read_text()[-4000:],
    }  # fmt: skip
