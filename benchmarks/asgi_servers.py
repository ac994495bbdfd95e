"""The same ASGI apps under uvicorn and under granian (a Rust HTTP server), in alternating rounds.

    .venv/bin/pip install granian && .venv/bin/python benchmarks/asgi_servers.py --bundle models/default

Four servers, each 1 worker with uvloop and no access log, started fresh per round in
alternating order: Vigil (`vigil.service.app:create_app`, VIGIL_BUNDLE set) and the bare
FastAPI endpoint (`benchmarks/bare_app.py`), each under uvicorn (httptools, as `vigil
serve` runs) and under granian (`--interface asgi`). Loads: one 28x28 PNG per request at
c = 1, 8 and 32 with `hey`. Per round: Vigil under granian / under uvicorn, and Vigil /
bare under each server (the ceiling ratio); each ratio is the median of the per-round
ones. Granian is not a Vigil dependency: install it into the venv to run this.
Writes benchmarks/results/asgi_servers.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table
from benchmarks.serve_speed import UVICORN, free_port, hey, launch, multipart, test_pngs

APPS = {"vigil": "vigil.service.app:create_app", "bare": "benchmarks.bare_app:app"}
LOADS = [(1, 2000), (8, 6000), (32, 8000)]  # (concurrency, requests)


def command(server: str, app: str, port: int) -> list[str]:
    target = APPS[app]
    bin_dir = Path(sys.executable).parent
    if server == "uvicorn":
        factory = ["--factory"] if app == "vigil" else []
        return [sys.executable, "-m", "uvicorn", target, *factory, "--host", "127.0.0.1",
                "--port", str(port), *UVICORN]  # fmt: skip
    factory = ["--factory"] if app == "vigil" else []
    return [str(bin_dir / "granian"), "--interface", "asgi", *factory, "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--loop", "uvloop", "--no-access-log",
            "--log-level", "warning", target]  # fmt: skip


def measure(server: str, app: str, bundle: Path, body: Path) -> list[dict[str, Any]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_BUNDLE=str(bundle), PYTHONPATH=str(ROOT))
    probe = "/readyz" if app == "vigil" else "/openapi.json"
    proc = launch(f"{app}-{server}", command(server, app, port), env, ROOT, port, probe)
    rows = []
    try:
        hey(port, body, 500, 8)  # warm-up
        for c, requests in LOADS:
            rows.append({"server": server, "app": app, "c": c, **hey(port, body, requests, c)})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("granian", path=str(Path(sys.executable).parent)) is None:
        raise SystemExit("needs granian in this venv: .venv/bin/pip install granian")
    bundle = args.bundle.resolve()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    pairs = [(s, a) for s in ("uvicorn", "granian") for a in APPS]
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "one.bin"
        body.write_bytes(multipart(test_pngs(1)))
        for round_ in range(args.rounds):
            for server, app in pairs if round_ % 2 == 0 else list(reversed(pairs)):
                measured = measure(server, app, bundle, body)
                rows += [{**r, "round": round_} for r in measured]
                print(measured, flush=True)

    def req_s(server: str, app: str, c: int, round_: int) -> float:
        return next(r["req_s"] for r in rows if (r["server"], r["app"], r["c"], r["round"]) == (server, app, c, round_))  # fmt: skip

    summary = []
    for c, _ in LOADS:
        ratios = {
            "vigil granian/uvicorn": [req_s("granian", "vigil", c, i) / req_s("uvicorn", "vigil", c, i) for i in range(args.rounds)],
            "vigil/bare uvicorn": [req_s("uvicorn", "vigil", c, i) / req_s("uvicorn", "bare", c, i) for i in range(args.rounds)],
            "vigil/bare granian": [req_s("granian", "vigil", c, i) / req_s("granian", "bare", c, i) for i in range(args.rounds)],
        }  # fmt: skip
        row: dict[str, Any] = {"c": c}
        for server, app in pairs:
            row[f"{app}-{server} req/s"] = float(
                np.median([req_s(server, app, c, i) for i in range(args.rounds)])
            )
        for name, values in ratios.items():
            row[name] = float(np.median(values))
            row[f"{name} per round"] = " ".join(f"{v:.2f}" for v in values)
        row["non-200"] = int(sum(r["errors"] for r in rows if r["c"] == c))
        summary.append(row)
    print(table(summary, list(summary[0])))
    save("asgi_servers", {"bundle": str(bundle), "command": " ".join(sys.argv),
                          "load_average_before": load_before, "load_average_after": os.getloadavg(),
                          "summary": summary, "rounds": rows})  # fmt: skip


if __name__ == "__main__":
    main()
