"""Cold start: process start -> /readyz 200 for a bundle, and where the time goes.

    .venv/bin/python benchmarks/cold_start.py --bundle models/default [--runs 7] [--before REF]

Each run spawns a fresh `vigil serve` (as a container or a new pod does) and polls it every
2 ms: `socket` is the first answer of any kind (uvicorn listens), `ready` the first
/readyz 200 (bundle loaded, every batch shape warmed). The parts, from the same run:
`load` and `warm-up` as the service logs them; and from separate processes alternating
with the runs: `interpreter` (`python -c pass`) and `imports` (what `vigil serve` imports).
With --before REF, the version at that git ref (a temporary worktree, this venv) is
started in alternate runs too. Every figure is a median over runs.
Writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table
from benchmarks.serve_speed import free_port

LOADED = re.compile(r"warmed (\d+) batch shapes in ([\d.]+) s \(([\d.]+) s in all\)")
IMPORTS = (
    "import time; t = time.perf_counter(); import vigil.service.cli; print(time.perf_counter() - t)"
)


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PYTHONPATH"] = str(tree)
    return env


def status(port: int, path: str) -> int | None:
    """The status of GET path, or None while nothing listens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def start_once(tree: Path, bundle: Path) -> dict[str, float]:
    """Spawn `vigil serve`, time the socket and readiness, read the load from its log."""
    port = free_port()
    cmd = [sys.executable, "-m", "vigil.cli", "serve", "--bundle", str(bundle),
           "--port", str(port), "--log-level", "info"]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=environment(tree), cwd=tree, stdout=log, stderr=log)
        socket = ready = float("nan")
        try:
            while time.perf_counter() - started < 60:
                code = status(port, "/readyz")
                now = time.perf_counter() - started
                if code is not None and socket != socket:  # the first answer: NaN until then
                    socket = now
                if code == 200:
                    ready = now
                    break
                time.sleep(0.002)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        log.seek(0)
        text = log.read().decode(errors="replace")
    match = LOADED.search(text)
    if match is None or ready != ready:
        raise RuntimeError(f"vigil serve did not become ready:\n{text}")
    return {"socket_s": socket, "ready_s": ready, "warmup_s": float(match.group(2)),
            "load_s": float(match.group(3)), "shapes": int(match.group(1))}  # fmt: skip


def parts(tree: Path) -> dict[str, float]:
    """The interpreter's start and the imports of `vigil serve`, each in a fresh process."""
    env = environment(tree)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, cwd=tree, check=True)
    interpreter = time.perf_counter() - started
    out = subprocess.run([sys.executable, "-c", IMPORTS], env=env, cwd=tree, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return {"interpreter_s": interpreter, "imports_s": float(out.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", help="git ref of a version to start in alternate runs")
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if args.before:
            trees = {"before": Path(tmp) / "before", **trees}
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(trees["before"]),
                            args.before], cwd=ROOT, check=True)  # fmt: skip
        try:
            for run in range(args.runs):
                for name, tree in trees.items():
                    row = {"version": name, "run": run, **start_once(tree, bundle), **parts(tree)}
                    rows.append(row)
                    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["before"])],
                               cwd=ROOT, check=False)  # fmt: skip
    keys = ["interpreter_s", "imports_s", "socket_s", "load_s", "warmup_s", "ready_s"]
    summary = [
        {"version": name, **{k: float(np.median([r[k] for r in rows if r["version"] == name]))
                             for k in keys}}
        for name in trees
    ]  # fmt: skip
    print(table(summary, ["version", *keys]))
    ratios = None
    if args.before:  # each run's pair was measured back to back: compare within it
        ratios = [this["ready_s"] / before["ready_s"] for before, this in zip(
            rows[0::2], rows[1::2], strict=True)]  # fmt: skip
        print(f"ready, this tree / before, median of per-run ratios: {np.median(ratios):.3f} "
              f"({' '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
    save("cold_start", {"bundle": str(bundle), "command": " ".join(sys.argv), "before": args.before,
                        "load_average_before": load_before, "load_average_after": os.getloadavg(),
                        "summary": summary, "ready_ratios": ratios, "runs": rows})  # fmt: skip


if __name__ == "__main__":
    main()
