"""ONNX Runtime time per image of the exported score graph: this tree vs another checkout.

    .venv/bin/python benchmarks/ort_cost.py --before /path/to/main-checkout [--size 28]

Exports the default VAE's graph (random weights: the cost does not depend on them) from
each source tree in a subprocess, with the local detectors where `vigil train` would put
them for that size, then times both in this process in alternating rounds
(1 intra-op thread, batch 1 and 32, median of 7 rounds of 2 s). Writes
benchmarks/results/ort_cost.json (ort_cost_SIZE.json for other sizes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table
from vigil.core.runtime import create_session

EXPORT = """
import sys, torch
sys.path.insert(0, {root!r})
from vigil.training.models import AutoEncoder, ModelConfig
from vigil.training.scores import ScoreGraph
from vigil.training.export import export_onnx
torch.manual_seed(0)
model = AutoEncoder(ModelConfig(channels={c}, height={s}, width={s})).eval()
try:  # trees with local detectors: as `vigil train` decides for this size (--local auto)
    from vigil.training.config import LOCAL_MIN_SIDE
    g = ScoreGraph(model, local={s} >= LOCAL_MIN_SIDE)
except ImportError:
    g = ScoreGraph(model)
export_onnx(g, __import__('pathlib').Path({out!r}))
"""


def export(root: Path, out: Path, size: int, channels: int) -> None:
    code = EXPORT.format(root=str(root), out=str(out), s=size, c=channels)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def per_image_us(session, batch: np.ndarray, seconds: float = 2.0) -> float:  # type: ignore[no-untyped-def]
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {name: batch})
        n += 1
    return 1e6 * (time.perf_counter() - started) / (n * len(batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"before": Path(tmp) / "before.onnx", "after": Path(tmp) / "after.onnx"}
        export(args.before.resolve(), paths["before"], args.size, args.channels)
        export(here, paths["after"], args.size, args.channels)
        sessions = {
            k: create_session(p, ["CPUExecutionProvider"], intra_op_threads=1)
            for k, p in paths.items()
        }
        rng = np.random.default_rng(0)
        rows = []
        for batch in (1, 32):
            x = rng.random((batch, args.channels, args.size, args.size), dtype=np.float32)
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for k, s in sessions.items():
                    times[k].append(per_image_us(s, x))
            before, after = np.median(times["before"]), np.median(times["after"])
            ratios = np.median(np.array(times["after"]) / np.array(times["before"]))
            rows.append({"batch": batch, "before us/image": float(before),
                         "after us/image": float(after), "ratio (median per round)": float(ratios)})  # fmt: skip
    print(table(rows, list(rows[0])))
    save("ort_cost" if args.size == 28 else f"ort_cost_{args.size}", {"command": "benchmarks/ort_cost.py " + " ".join(sys.argv[1:]),
                      "size": args.size, "threads": 1, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
