"""A/B of two versions of `vigil serve`, in alternating rounds: the code at a git ref vs this tree.

For refactors that must not cost speed: both versions serve the same bundle with their
defaults, each round measures both with the same `hey` loads, and each ratio is the
median of the ratios within a round (a shared VM drifts between minutes).

    .venv/bin/python benchmarks/ab_serve.py --before cb82dd2 --bundle models/default [--rounds 5]

The ref is checked out into a temporary git worktree and run with this venv (its
dependencies must match). Writes benchmarks/results/ab_serve.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table
from benchmarks.serve_speed import free_port, hey, launch, multipart, test_pngs

LOADS = [(1, 32, 8000), (1, 1, 2000), (1, 8, 6000), (32, 8, 400)]  # (images, c, requests)


def serve_command(tree: Path, bundle: Path, port: int) -> list[str]:
    """`vigil serve` of the code in `tree`, whichever layout it has."""
    module = "vigil.cli" if (tree / "vigil" / "cli.py").exists() else "training.cli"
    return [sys.executable, "-m", module, "serve", "--bundle", str(bundle), "--port", str(port)]


def measure(name: str, tree: Path, bundle: Path, bodies: dict[int, Path]) -> list[dict[str, Any]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PYTHONPATH"] = str(tree)
    proc = launch(name, serve_command(tree, bundle, port), env, tree, port, "/readyz")
    rows = []
    try:
        hey(port, bodies[1], 500, 8)  # warm-up
        for images, c, requests in LOADS:
            r = hey(port, bodies[images], requests, c)
            rows.append({"version": name, "images/req": images, "c": c, **r})
            rows[-1]["img_s"] = r["req_s"] * images
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the version to compare with")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    pngs = test_pngs(32)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), args.before],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            bodies = {1: Path(tmp) / "one.bin", 32: Path(tmp) / "many.bin"}
            bodies[1].write_bytes(multipart(pngs[:1]))
            bodies[32].write_bytes(multipart(pngs))
            for round_ in range(args.rounds):
                for name, tree in (("before", before), ("after", ROOT)):
                    rows += [{**r, "round": round_} for r in measure(name, tree, bundle, bodies)]
                    print(rows[-len(LOADS) :], flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False
            )

    def value(version: str, images: int, c: int, round_: int, key: str) -> float:
        return next(r[key] for r in rows if (r["version"], r["images/req"], r["c"], r["round"]) == (version, images, c, round_))  # fmt: skip

    summary = []
    for images, c, _ in LOADS:
        ratios = [value("after", images, c, i, "img_s") / value("before", images, c, i, "img_s")
                  for i in range(args.rounds)]  # fmt: skip
        summary.append({
            "images/req": images, "c": c,
            "before_img_s": float(np.median([value("before", images, c, i, "img_s") for i in range(args.rounds)])),
            "after_img_s": float(np.median([value("after", images, c, i, "img_s") for i in range(args.rounds)])),
            "after/before": float(np.median(ratios)),
            "ratios": " ".join(f"{r:.3f}" for r in ratios),
            "p99_before_ms": float(np.median([value("before", images, c, i, "p99_ms") for i in range(args.rounds)])),
            "p99_after_ms": float(np.median([value("after", images, c, i, "p99_ms") for i in range(args.rounds)])),
            "errors": int(sum(r["errors"] for r in rows if (r["images/req"], r["c"]) == (images, c))),
        })  # fmt: skip
    print(table(summary, list(summary[0])))
    save("ab_serve", {"before": args.before, "load_average": os.getloadavg(), "bundle": str(bundle), "command": " ".join(sys.argv),
                      "summary": summary, "rounds": rows})  # fmt: skip


if __name__ == "__main__":
    main()
