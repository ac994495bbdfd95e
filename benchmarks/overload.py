"""Overload: offered load at 2x, 4x and 8x the sustainable rate, with and without admission control.

    .venv/bin/python benchmarks/overload.py --bundle models/default [--images 32] [--rounds 3]

1. The sustainable rate R: the answered (200) req/s of `hey` closed-loop (c = 8, no rate
   limit) against vigil-unbounded, at the start of every round.
2. For k = 2, 4, 8: requests arriving at kR per second for `--seconds`, open loop
   (`benchmarks/open_loop.py`: Poisson arrivals on up to 512 keep-alive connections), so
   the offered rate stays kR whether requests are refused in a millisecond or accepted in
   a hundred. (A closed loop such as `hey -c` sends faster the faster refusals come back;
   `hey -q` fires all its workers on one tick, in bursts.)
3. Two servers in alternating order, each started fresh per round:
   vigil            `vigil serve` with its defaults (admission control on)
   vigil-unbounded  the same with VIGIL_MAX_QUEUE=0 and VIGIL_LATENCY_BUDGET_MS=0: the
                    queue grows, as before admission control
Per point: offered and accepted (200) req/s, refused (503 overloaded) share, p50/p99 of the
accepted and of the refused (from each request's scheduled arrival), other answers and
lost requests (sent, never answered within 30 s: a connection error or a timeout), and
the server's own count of refusals (vigil_overloaded_total).
Every figure is the median over rounds. Writes benchmarks/results/overload.json.

The requests carry `--images` 28x28 PNGs each (default 32): with many images per request
the model is the bottleneck, where the queue in front of it grows. With one image per
request on this small model the event loop is (BENCHMARKS.md), and 8x its sustainable rate
is more than a load generator on the same two cores can send.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import open_loop
from benchmarks.common import save, table
from benchmarks.serve_speed import BOUNDARY, free_port, hey, launch, multipart, test_pngs

SERVERS = {
    "vigil": {},
    "vigil-unbounded": {"VIGIL_MAX_QUEUE": "0", "VIGIL_LATENCY_BUDGET_MS": "0"},
}
FACTORS = (2, 4, 8)


def start(name: str, bundle: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(SERVERS[name], PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "vigil.cli", "serve", "--bundle", str(bundle),
           "--port", str(port)]  # fmt: skip
    return launch(name, cmd, env, ROOT, port, "/readyz")


def refusals(port: int) -> float:
    """The server's vigil_overloaded_total, all reasons."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vigil_overloaded_total{")
    )


def offered(port: int, body: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Requests arriving at `rate` per second for `seconds` (open loop), and their answers."""
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    request = open_loop.post("/score", content_type, body.read_bytes())
    answers = open_loop.run(port, request, rate, seconds)
    latency = np.array([a.latency_s for a in answers]) * 1000
    status = np.array([a.status for a in answers])
    wall = max(a.arrival_s + a.latency_s for a in answers)
    accepted, refused = latency[status == 200], latency[status == 503]
    return {
        "sent": len(answers),
        "offered_req_s": len(answers) / seconds,
        "accepted_req_s": len(accepted) / wall,
        "refused_share": len(refused) / len(answers),
        "accepted_p50_ms": _percentile(accepted, 50),
        "accepted_p99_ms": _percentile(accepted, 99),
        "refused_p50_ms": _percentile(refused, 50),
        "refused_p99_ms": _percentile(refused, 99),
        "other": int(np.sum((status != 200) & (status != 503) & (status != 0))),
        "lost": int(np.sum(status == 0)),
    }


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def sustainable(bundle: Path, body: Path, images: int) -> float:
    """Closed-loop req/s answered 200 at c = 8 without admission control: what it sustains."""
    port = free_port()
    proc = start("vigil-unbounded", bundle, port)
    try:
        hey(port, body, 200, 8)  # warm-up
        run = hey(port, body, max(400, 16_000 // images), 8)
        return float(run["req_s"] * run["codes"].get(200, 0) / sum(run["codes"].values()))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(
    name: str, bundle: Path, body: Path, rate: float, seconds: float
) -> list[dict[str, Any]]:
    """Every overload factor against one freshly started server."""
    port = free_port()
    proc = start(name, bundle, port)
    rows = []
    try:
        hey(port, body, 200, 8)  # warm-up
        for factor in FACTORS:
            before = refusals(port)
            row = offered(port, body, factor * rate, seconds)
            row["server_refusals"] = refusals(port) - before
            rows.append({"server": name, "factor": factor, **row})
            print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


KEYS = ["offered_req_s", "accepted_req_s", "refused_share", "accepted_p50_ms", "accepted_p99_ms",
        "refused_p50_ms", "refused_p99_ms"]  # fmt: skip


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["server"], r["factor"]), []).append(r)
    out = []
    for (server, factor), group in groups.items():
        row: dict[str, Any] = {"server": server, "factor": factor}
        row.update({key: float(np.nanmedian([g[key] for g in group])) for key in KEYS})
        for key in ("sent", "other", "lost", "server_refusals"):
            row[key] = int(sum(g[key] for g in group))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--images", type=int, default=32, help="28x28 PNGs per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each point")
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.bin"
        body.write_bytes(multipart(test_pngs(args.images)))
        for round_ in range(args.rounds):
            rate = sustainable(bundle, body, args.images)
            rates.append(rate)
            print(f"round {round_ + 1}: sustainable {rate:.0f} req/s", flush=True)
            names = list(SERVERS) if round_ % 2 == 0 else list(reversed(SERVERS))
            for name in names:
                measured = measure(name, bundle, body, rate, args.seconds)
                rows += [{**r, "round": round_, "sustainable_req_s": rate} for r in measured]
    summary = medians(rows)
    print(table(summary, ["server", "factor", *KEYS, "other", "lost", "server_refusals"]))
    print(f"sustainable req/s per round: {', '.join(f'{r:.0f}' for r in rates)}")
    save(
        "overload",
        {
            "bundle": str(bundle),
            "images_per_request": args.images,
            "command": " ".join(sys.argv),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "sustainable_req_s": rates,
            "rows": summary,
            "rounds": rows,
        },
    )


if __name__ == "__main__":
    main()
