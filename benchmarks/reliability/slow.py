"""Slow clients and clients that hang up mid-body, among ordinary ones.

`slow` clients each send a good one-image request's body one byte at a time, and keep
trickling until the ordinary load is over; `hangups` clients send part of a body and
close. Meanwhile `concurrency` keep-alive clients send `requests` ordinary requests. What
must hold: every ordinary request is answered 200 while every slow client is still in the
middle of its body (so none waited for them), the slow clients are answered 200 once their
body is complete, the hang-ups cost nothing but their own request (counted as 400
client_disconnected), and no answer is a 5xx.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.reliability.catalogue import form, png, score, test_images
from benchmarks.reliability.client import HOST, Connection, Fate, read_answer
from benchmarks.reliability.server import start
from benchmarks.reliability.soak import counters


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", body


async def _slow(port: int, raw: bytes, gap_s: float, fast_done: asyncio.Event) -> dict[str, Any]:
    """Send `raw` a byte every `gap_s` while the ordinary load runs, then the rest at once."""
    head, body = _split(raw)
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(head)
    sent = 0
    mid_body_when_fast_done = False
    while sent < len(body):
        if fast_done.is_set():
            mid_body_when_fast_done = sent < len(body)
            writer.write(body[sent:])
            sent = len(body)
            break
        writer.write(body[sent : sent + 1])
        await writer.drain()
        sent += 1
        await asyncio.sleep(gap_s)
    await writer.drain()
    answer = await read_answer(reader)
    writer.close()
    return {"status": answer.status, "mid_body_when_load_ended": mid_body_when_fast_done}


async def _hang_up(port: int, raw: bytes, keep: int) -> None:
    """Send the headers and `keep` bytes of the body, then close the connection."""
    head, body = _split(raw)
    _, writer = await asyncio.open_connection(HOST, port)
    writer.write(head + body[:keep])
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.close()


async def _ordinary(port: int, raw: bytes, left: list[int], seen: Counter[str]) -> None:
    conn = Connection(port, timeout=60)
    while left[0] > 0:
        left[0] -= 1
        result = await conn.send(raw)
        key = str(result.answer.status) if result.answer else result.fate.value
        seen[key if result.fate is Fate.ANSWERED else f"not answered: {key}"] += 1
    await conn.close()


async def _run(port: int, slow: int, hangups: int, requests: int, concurrency: int, gap_s: float) -> dict[str, Any]:  # fmt: skip
    raw = score(form([("a.png", png(test_images(1)[0]))]))
    fast_done = asyncio.Event()
    slow_tasks = [asyncio.create_task(_slow(port, raw, gap_s, fast_done)) for _ in range(slow)]
    await asyncio.sleep(0.2)  # every slow client is mid-body
    seen: Counter[str] = Counter()
    left = [requests]
    started = time.perf_counter()
    ordinary = [_ordinary(port, raw, left, seen) for _ in range(concurrency)]
    cut = len(_split(raw)[1]) // 2
    hangs = [_hang_up(port, raw, keep=(i * 37) % cut) for i in range(hangups)]
    await asyncio.gather(*ordinary, *hangs)
    ordinary_s = time.perf_counter() - started
    fast_done.set()
    slow_results = await asyncio.wait_for(asyncio.gather(*slow_tasks), 60)
    return {"ordinary": dict(seen), "ordinary_s": round(ordinary_s, 2), "slow": slow_results}


def slow_and_hanging_clients(
    bundle: Path,
    workdir: Path,
    slow: int = 4,
    hangups: int = 20,
    requests: int = 400,
    concurrency: int = 8,
    gap_s: float = 0.01,
) -> dict[str, Any]:
    server = start(bundle, workdir / "slow.log", {"VIGIL_DRAIN_S": "0"})
    try:
        before = counters(server)
        seen = asyncio.run(_run(server.port, slow, hangups, requests, concurrency, gap_s))
        time.sleep(0.5)  # the last hang-ups' requests finish on the server
        after = counters(server)
    finally:
        server.stop()

    def delta(status: str) -> int:
        key = (
            "vigil_requests_total",
            (("method", "POST"), ("route", "/score"), ("status", status)),
        )
        return round(after.get(key, 0) - before.get(key, 0))

    statuses = {dict(k[1])["status"] for k in after if k[0] == "vigil_requests_total"}
    return {
        **seen,
        "hangups": hangups,
        "server_score_200": delta("200"),
        "server_score_400": delta("400"),
        "server_5xx": sum(delta(s) for s in statuses if s.startswith("5")),
        "log_has_traceback": "Traceback" in server.log.read_text(),
    }
