"""Soak: a sustained mix of good and bad requests against one `vigil serve`, and the books.

`concurrency` keep-alive clients send `requests` requests drawn (seeded) from the
catalogue: mostly good scoring requests of real images of every class, `bad_share` of
every kind of bad one. Every answer is checked against what its kind must get (status and
error code, the one error shape); the server's resident memory is sampled throughout. At
the end the Prometheus counters must add up exactly to what the clients saw: requests by
route, method and status; images scored; anomalies flagged per score.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.reliability.catalogue import Kind, mixed, test_images
from benchmarks.reliability.client import Connection, Fate
from benchmarks.reliability.server import Server, start

MAX_FILES = 64  # the service's defaults, which the bad kinds are built against
MAX_BODY_BYTES = 16 * 1024 * 1024
WINDOWS = 10  # the run is cut into this many windows for latency and memory


@dataclass
class Books:
    """What the clients saw."""

    by_label: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    fates: Counter[str] = field(default_factory=Counter)
    images: int = 0
    flagged: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # answers unlike their kind's
    latencies: list[tuple[int, float]] = field(default_factory=list)  # (done #, s), 1-image
    memory: list[tuple[int, float]] = field(default_factory=list)  # (done #, RSS MiB)
    done: int = 0


def check(kind: Kind, status: int, body: bytes, books: Books) -> None:
    """Tally one answer, and note it if it is not what its kind must get."""
    books.by_label[(kind.route, kind.method, str(status))] += 1
    if status != kind.status:
        books.wrong.append(f"{kind.name}: {status} {body[:200]!r}")
        return
    if status != 200:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        shape_ok = set(data) == {"error"} and isinstance(error, dict)
        if not shape_ok or error.get("code") != kind.code or not error.get("message"):
            books.wrong.append(f"{kind.name}: {body[:200]!r}")
        return
    if kind.route == "/score":
        for result in orjson.loads(body)["results"]:
            books.images += 1
            books.flagged.update(result["flagged_by"])


async def _worker(
    port: int, kinds: list[Kind], schedule: np.ndarray, books: Books, cursor: list[int]
) -> None:
    conn = Connection(port, timeout=60)
    try:
        while cursor[0] < len(schedule):
            kind = kinds[schedule[cursor[0]]]
            cursor[0] += 1
            books.by_kind[kind.name if not kind.good else "good: " + kind.name.split(" #")[0]] += 1
            started = time.perf_counter()
            result = await conn.send(kind.raw)
            books.done += 1
            if result.fate is not Fate.ANSWERED or result.answer is None:
                books.fates[result.fate.value] += 1
                continue
            if kind.name.startswith("1 image"):
                books.latencies.append((books.done, time.perf_counter() - started))
            check(kind, result.answer.status, result.answer.body, books)
    finally:
        await conn.close()


async def _sample_memory(server: Server, books: Books, stop: asyncio.Event) -> None:
    while not stop.is_set():
        books.memory.append((books.done, server.rss_mib()))
        await asyncio.sleep(0.25)


async def _load(server: Server, kinds: list[Kind], schedule: np.ndarray, concurrency: int) -> Books:
    books = Books()
    cursor = [0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_memory(server, books, stop))
    workers = [_worker(server.port, kinds, schedule, books, cursor) for _ in range(concurrency)]
    await asyncio.gather(*workers)
    stop.set()
    await sampler
    books.memory.append((books.done, server.rss_mib()))
    return books


def counters(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, text = server.get("/metrics")
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def compare(before: dict[Any, float], after: dict[Any, float], books: Books) -> dict[str, Any]:
    """The counters' increments against the clients' books: every mismatch, by name."""

    def delta(name: str, **labels: str) -> int:
        key = (name, tuple(sorted(labels.items())))
        return round(after.get(key, 0.0) - before.get(key, 0.0))

    requests = {
        f"{route} {method} {status}": (delta("vigil_requests_total", route=route, method=method, status=status), n)
        for (route, method, status), n in sorted(books.by_label.items())
    }  # fmt: skip
    counted = sum(
        round(value - before.get(key, 0.0))
        for key, value in after.items()
        if key[0] == "vigil_requests_total" and dict(key[1])["route"] != "/metrics"
    )
    anomalies = {
        score: (delta("vigil_anomalies_total", score=score), books.flagged[score])
        for score in sorted(
            {dict(k[1])["score"] for k in after if k[0] == "vigil_anomalies_total"}
            | set(books.flagged)
        )
    }
    images = (delta("vigil_images_scored_total"), books.images)
    pairs = [
        *requests.values(),
        *anomalies.values(),
        images,
        (counted, sum(books.by_label.values())),
    ]
    return {
        "requests_by_label": {k: {"counter": c, "clients": n} for k, (c, n) in requests.items()},
        "requests_counted_total": counted,
        "images_scored": {"counter": images[0], "clients": images[1]},
        "anomalies": {k: {"counter": c, "clients": n} for k, (c, n) in anomalies.items()},
        "all_equal": all(c == n for c, n in pairs),
    }


def windows(books: Books, total: int) -> list[dict[str, float]]:
    """p50 / p99 of one-image requests and the RSS at the end of each tenth of the run."""
    out = []
    for w in range(WINDOWS):
        low, high = total * w // WINDOWS, total * (w + 1) // WINDOWS
        lat = [s for done, s in books.latencies if low < done <= high]
        rss = [m for done, m in books.memory if done <= high]
        out.append({
            "window": w + 1,
            "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 2) if lat else float("nan"),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 2) if lat else float("nan"),
            "rss_mib": round(rss[-1], 1) if rss else float("nan"),
        })  # fmt: skip
    return out


def soak(
    bundle: Path,
    workdir: Path,
    requests: int,
    concurrency: int = 16,
    bad_share: float = 0.3,
    seed: int = 0,
    warmup_share: float = 0.1,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the soak against a fresh `vigil serve` of `bundle` (its defaults, and `env`);
    the figures and the books."""
    kinds = mixed(test_images(64, seed), MAX_FILES, MAX_BODY_BYTES, bad_share)
    weights = np.array([k.weight for k in kinds])
    schedule = np.random.default_rng(seed).choice(len(kinds), requests, p=weights / weights.sum())
    server = start(bundle, workdir / "soak.log", {"VIGIL_DRAIN_S": "1", **(env or {})})
    try:
        before = counters(server)
        started = time.perf_counter()
        books = asyncio.run(_load(server, kinds, schedule, concurrency))
        seconds = time.perf_counter() - started
        after = counters(server)
        server_5xx = sum(
            round(v - before.get(k, 0.0))
            for k, v in after.items()
            if k[0] == "vigil_requests_total" and dict(k[1])["status"].startswith("5")
        )
    finally:
        returncode = server.stop()
    warm = [m for done, m in books.memory if done >= requests * warmup_share]
    rss_warm, rss_end = (warm[0], books.memory[-1][1]) if warm else (float("nan"),) * 2
    statuses = Counter(status for (_, _, status) in books.by_label.elements())
    return {
        "requests": requests,
        "concurrency": concurrency,
        "bad_share": bad_share,
        "seconds": round(seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
        "by_kind": dict(sorted(books.by_kind.items())),
        "statuses": dict(sorted(statuses.items())),
        "answers_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        # 503 overloaded: refused by admission control (issue 13), counted apart from errors
        "refused_overloaded": sum(w.count('"overloaded"') for w in books.wrong),
        "server_5xx": server_5xx,
        "not_answered": dict(books.fates),
        "wrong_answers": len(books.wrong),
        "wrong_examples": books.wrong[:5],
        "images_scored": books.images,
        "anomalies": dict(books.flagged),
        "counters": compare(before, after, books),
        "rss_mib_after_warmup": round(rss_warm, 1),
        "rss_mib_end": round(rss_end, 1),
        "rss_growth_pct": round((rss_end / rss_warm - 1) * 100, 2),
        "windows": windows(books, requests),
        "returncode": returncode,
    }
