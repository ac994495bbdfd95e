"""Service throughput and latency, side by side in one run, with `hey` on 127.0.0.1.

Servers, each 1 uvicorn worker (uvloop + httptools), started and stopped by this script:
  vigil          `vigil serve` with its defaults (dynamic batching on)
  vigil-nobatch  the same with VIGIL_BATCHING=false
  bare-fastapi   a FastAPI endpoint that only reads the multipart upload (benchmarks/bare_app.py)
  torch-eager    FastAPI + torch eager per request, same architecture (benchmarks/torch_app.py)
  bentoml        BentoML serving the bundle's ONNX graph, `@bentoml.api` (benchmarks/bento_service.py)
  bentoml-batching  the same with BentoML's adaptive batching (`batchable=True`, its defaults)
The BentoML servers run from their own environment, .venv-bentoml (BentoML 1.4.40,
created by this script on first use; never Vigil's dependencies).
Loads: one 28x28 PNG per request at c = 1, 8, 32, 128; 32 PNGs per request at c = 8.
Also ONNX Runtime alone, in-process, at batch 1 and 32, in every round: the ceiling for the model.

    .venv/bin/python benchmarks/serve_speed.py --bundle models/default [--quick] [--rounds 3] [--load wrk]

Servers are measured in alternating rounds; figures are medians over the rounds.

Needs `hey` (Debian: apt-get install hey), and `wrk` for --load wrk. Writes
benchmarks/results/serve_speed.json (serve_speed_wrk.json with --load wrk).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table
from vigil.core.bundle import load_bundle
from vigil.core.runtime import create_session, run
from vigil.training.data import read_images

BENTOML_VERSION = "1.4.40"
BENTOML_VENV = ROOT / ".venv-bentoml"
BENTOML_SERVICES = {"bentoml": "Plain", "bentoml-batching": "Batched"}

BOUNDARY = "vigilbenchboundary"
UVICORN = [
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(pngs: list[bytes]) -> bytes:
    parts = []
    for i, png in enumerate(pngs):
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.png\"\r\n"
                "Content-Type: image/png\r\n\r\n")  # fmt: skip
        parts.append(head.encode() + png + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def test_pngs(count: int) -> list[bytes]:
    images = read_images("fashion-mnist", "test")
    assert images.arrays is not None
    out = []
    for array in images.arrays[:count]:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bentoml_command() -> Path:
    """`bentoml` of the benchmark's own environment, made on first use."""
    command = BENTOML_VENV / "bin" / "bentoml"
    if not command.exists():
        print(f"creating {BENTOML_VENV} with bentoml=={BENTOML_VERSION}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENTOML_VENV)], check=True)
        subprocess.run([str(BENTOML_VENV / "bin" / "pip"), "install", "-q",
                        f"bentoml=={BENTOML_VERSION}", "onnxruntime", "pillow", "numpy"],
                       check=True)  # fmt: skip
    return command


def start(name: str, bundle: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VIGIL_BUNDLE": str(bundle), "PYTHONPATH": str(ROOT)}
    if name in BENTOML_SERVICES:
        env["VIGIL_BENCH_BUNDLE"] = str(bundle.resolve())
        cmd = [str(bentoml_command()), "serve", f"benchmarks.bento_service:{BENTOML_SERVICES[name]}",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        return launch(name, cmd, env, ROOT, port, "/readyz")
    if name.startswith("vigil"):
        cmd = [sys.executable, "-m", "vigil.cli", "serve", "--bundle", str(bundle),
               "--port", str(port)]  # fmt: skip
        if name == "vigil-nobatch":
            env["VIGIL_BATCHING"] = "false"
    else:
        app = {
            "bare-fastapi": "benchmarks.bare_app:app",
            "torch-eager": "benchmarks.torch_app:app",
        }[name]
        cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               *UVICORN]  # fmt: skip
    probe = "/readyz" if name.startswith("vigil") else "/openapi.json"
    return launch(name, cmd, env, ROOT, port, probe)


def launch(
    name: str, cmd: list[str], env: dict[str, str], cwd: Path, port: int, probe: str
) -> subprocess.Popen[bytes]:
    """Start a server and wait until `probe` answers 200 (60 s at most)."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(
        f"{name} did not become ready: {proc.stderr.read().decode() if proc.stderr else ''}"
    )


def hey(port: int, body: Path, requests: int, concurrency: int) -> dict[str, Any]:
    """One `hey` run: req/s, p50/p99 in ms, responses per status code, and non-200 count."""
    cmd = ["hey", "-n", str(requests), "-c", str(concurrency), "-m", "POST", "-t", "30",
           "-T", f"multipart/form-data; boundary={BOUNDARY}", "-D", str(body),
           f"http://127.0.0.1:{port}/score"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        m.group(1): float(m.group(2)) * 1000 for m in re.finditer(r"(\d+)%+ in ([\d.]+) secs", out)
    }
    codes = {int(k): int(v) for k, v in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    return {
        "req_s": rps,
        "p50_ms": lat.get("50", float("nan")),
        "p99_ms": lat.get("99", float("nan")),
        "errors": requests - codes.get(200, 0),
        "codes": codes,
    }


WRK_SCRIPT = """
local f = assert(io.open(os.getenv("VIGIL_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=BOUNDARY"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %f %d %d %f %f\\n", summary.requests,
    summary.duration / 1e6, summary.errors.status, summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
""".replace("BOUNDARY", BOUNDARY)


def wrk(port: int, body: Path, requests: int, concurrency: int) -> dict[str, float]:
    """The same load with `wrk` (one thread): it runs for a duration, so `requests` sets one
    long enough for about that many requests at a few thousand per second."""
    seconds = max(2, round(requests / 2000))
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s",
               "-s", script.name, f"http://127.0.0.1:{port}/score"]  # fmt: skip
        env = {**os.environ, "VIGIL_BENCH_BODY": str(body)}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, env=env)
    fields = re.search(r"RESULT (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)", out.stdout)
    if fields is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout} {out.stderr}")
    count, duration, bad_status, failed, p50, p99 = (float(v) for v in fields.groups())
    return {
        "req_s": count / duration,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": int(bad_status + failed),
    }


LOADERS = {"hey": hey, "wrk": wrk}


def ort_alone(bundle: Path, seconds: float = 2.0) -> dict[str, float]:
    """ONNX Runtime's own images/s on the bundle's graph, in-process, at batch 1 and 32:
    the best of 1 intra-op thread and one per CPU (the ceiling the service is held to)."""
    manifest, model_path = load_bundle(bundle)
    spec = manifest.input
    out: dict[str, float] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        session = create_session(model_path, ["CPUExecutionProvider"], intra_op_threads=threads)
        for batch in (1, 32):
            x = np.random.default_rng(0).random(
                (batch, spec.channels, spec.height, spec.width), dtype=np.float32
            )
            for _ in range(20):
                run(session, x, manifest.scores)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                run(session, x, manifest.scores)
                count += batch
            rate = count / (time.perf_counter() - started)
            out[f"batch_{batch}_threads_{threads}_img_s"] = rate
            key = f"batch_{batch}_img_s"
            out[key] = max(out.get(key, 0.0), rate)
    return out


LOADS = [(1, 1), (1, 8), (1, 32), (1, 128), (32, 8)]  # (images per request, concurrency)


def requests_for(images: int, c: int, scale: float) -> int:
    if images > 1:
        return int(400 * scale) // c * c
    return int(max(c * 20, (1000 if c == 1 else 4000) * scale)) // c * c  # hey rounds down


def measure(
    name: str, bundle: Path, bodies: dict[int, Path], scale: float, load: str = "hey"
) -> list[dict[str, Any]]:
    """Every load against one freshly started server."""
    port = free_port()
    proc = start(name, bundle, port)
    rows = []
    loader = LOADERS[load]
    try:
        hey(port, bodies[1], 200, 8)  # warm-up
        for images, c in LOADS:
            r = loader(port, bodies[images], requests_for(images, c, scale), c)
            rows.append({"server": name, "images/req": images, "c": c, **r})
            rows[-1]["img_s"] = r["req_s"] * images
            print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, images/req, c): the median of each figure over the rounds."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["server"], r["images/req"], r["c"]), []).append(r)
    out = []
    for (server, images, c), group in groups.items():
        row: dict[str, Any] = {"server": server, "images/req": images, "c": c}
        for key in ("req_s", "img_s", "p50_ms", "p99_ms"):
            row[key] = float(np.median([g[key] for g in group]))
        row["errors"] = int(sum(g["errors"] for g in group))
        row["rounds"] = len(group)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--quick", action="store_true", help="fewer requests per point")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all servers; each figure is the median over rounds, and each "
        "ratio the median of the ratios within a round (neighbours on a shared machine "
        "move absolute figures between rounds)",
    )
    parser.add_argument(
        "--servers",
        nargs="*",
        default=["vigil", "vigil-nobatch", "bare-fastapi", "torch-eager", *BENTOML_SERVICES],
    )
    parser.add_argument(
        "--load",
        choices=sorted(LOADERS),
        default="hey",
        help="load generator (wrk uses ~5x less CPU than hey; the warm-up always uses hey)",
    )
    args = parser.parse_args()
    for tool in {"hey", args.load}:
        if shutil.which(tool) is None:
            raise SystemExit(f"needs `{tool}` (Debian: apt-get install {tool})")
    scale = 0.25 if args.quick else 1.0
    pngs = test_pngs(32)
    ort_rounds: list[dict[str, float]] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {1: Path(tmp) / "one.bin", 32: Path(tmp) / "many.bin"}
        bodies[1].write_bytes(multipart(pngs[:1]))
        bodies[32].write_bytes(multipart(pngs))
        for round_ in range(args.rounds):
            ort_rounds.append(ort_alone(args.bundle))  # the ceiling, in the same round
            for name in args.servers:
                measured = measure(name, args.bundle, bodies, scale, args.load)
                rows += [{**r, "round": round_} for r in measured]

    def at(server: str, images: int, c: int, key: str, round_: int) -> float:
        return next(
            (
                r[key]
                for r in rows
                if (r["server"], r["images/req"], r["c"], r["round"]) == (server, images, c, round_)
            ),
            float("nan"),
        )

    per_round = [
        {
            "c32_vs_bare": at("vigil", 1, 32, "req_s", i) / at("bare-fastapi", 1, 32, "req_s", i),
            "c32_vs_torch": at("vigil", 1, 32, "req_s", i) / at("torch-eager", 1, 32, "req_s", i),
            "c32_vs_bentoml": at("vigil", 1, 32, "req_s", i) / at("bentoml", 1, 32, "req_s", i),
            "c32_vs_bentoml_batching": at("vigil", 1, 32, "req_s", i)
            / at("bentoml-batching", 1, 32, "req_s", i),
            "batch32_vs_ort": at("vigil", 32, 8, "img_s", i) / ort_rounds[i]["batch_32_img_s"],
            "p99_c1_ms": at("vigil", 1, 1, "p99_ms", i),
        }
        for i in range(args.rounds)
    ]
    goals = {key: float(np.median([g[key] for g in per_round])) for key in per_round[0]}
    ort = {key: float(np.median([o[key] for o in ort_rounds])) for key in ort_rounds[0]}
    summary = medians(rows)
    print(
        table(
            summary,
            ["server", "images/req", "c", "req_s", "img_s", "p50_ms", "p99_ms", "errors", "rounds"],
        )
    )
    print(
        f"\nONNX Runtime alone: {ort['batch_1_img_s']:.0f} img/s at batch 1, {ort['batch_32_img_s']:.0f} at batch 32"
    )
    for i, g in enumerate(per_round):
        print(f"round {i + 1}: " + ", ".join(f"{k} = {v:.3g}" for k, v in g.items()))
    print("goals (median over rounds): " + ", ".join(f"{k} = {v:.3g}" for k, v in goals.items()))
    save(
        "serve_speed" if args.load == "hey" else f"serve_speed_{args.load}",
        {
            "bundle": str(args.bundle),
            "load": args.load,
            "load_average_after": os.getloadavg(),
            "bentoml": BENTOML_VERSION if set(BENTOML_SERVICES) & set(args.servers) else None,
            "command": " ".join(sys.argv),
            "rows": summary,
            "rounds": rows,
            "onnxruntime_alone": ort,
            "onnxruntime_alone_rounds": ort_rounds,
            "goals_per_round": per_round,
            "goals": goals,
        },
    )


if __name__ == "__main__":
    main()
