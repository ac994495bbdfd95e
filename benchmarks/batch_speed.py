"""Offline scoring speed, side by side in one run, on the same PNG files:
  local          `vigil score` (decode processes on every core, ONNX Runtime in batches of 1024)
  ray-1, ray-2   `vigil score --ray` on a local Ray cluster, 1 and 2 actors (1 CPU each)
  service-32     `vigil serve` (defaults) fed 32-image multipart requests by 8 client threads

    .venv/bin/python benchmarks/batch_speed.py --bundle models/default [--images 100000] [--quick]

The images are Fashion-MNIST (train then test, cycled past 70,000) written once as 28x28
PNG files under --workdir, 1,000 per folder. Each contender runs as its own process tree;
images/s is the number of files over the wall time from process start to exit (start-up,
model load and Ray's cluster start included), and peak memory is the largest sum of RSS
over the process tree, sampled every 0.2 s (shared pages are counted in every process that
maps them, so it is an upper bound). Writes benchmarks/results/batch_speed.json.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table
from vigil.core.bundle import load_bundle
from vigil.core.runtime import create_session, run
from vigil.training.data import read_images

VIGIL = [sys.executable, "-m", "vigil.cli"]
BOUNDARY = "vigilbatchbench"


def write_pngs(folder: Path, count: int) -> list[Path]:
    """`count` Fashion-MNIST PNG files (reused when a previous run wrote them)."""
    marker = folder / f".complete-{count}"
    paths = [folder / f"{i // 1000:03d}" / f"{i:06d}.png" for i in range(count)]
    if marker.exists():
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    train, test = read_images("fashion-mnist", "train"), read_images("fashion-mnist", "test")
    assert train.arrays is not None and test.arrays is not None
    arrays = np.concatenate([train.arrays, test.arrays])
    started = time.perf_counter()
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arrays[i % len(arrays)]).save(path, format="PNG")
    marker.touch()
    print(f"wrote {count:,} PNG files to {folder} in {time.perf_counter() - started:.0f} s")
    return paths


# ---------------------------------------------------------------- measuring a process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(pid: int) -> int:
    """Bytes of RSS of `pid` and all its descendants."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        current = todo.pop()
        todo += tree.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakMemory:
    """Samples a process tree's RSS every 0.2 s in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_command(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    memory = PeakMemory(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    peak = memory.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-3000:]}")
    reported = re.search(r"\(([\d,]+) images/s\)", out)
    return {
        "seconds": seconds,
        "peak_rss_mib": peak / 2**20,
        "job_images_s": float(reported.group(1).replace(",", "")) if reported else None,
        "summary": out.strip().splitlines()[-4:],
    }


# ---------------------------------------------------------------- contenders


def score_command(bundle: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    return [*VIGIL, "score", "--bundle", str(bundle), "--out", str(out), str(folder),
            "--no-progress", "--overwrite", *extra]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


def _multipart(paths: list[Path]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{p.name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + p.read_bytes()
        + b"\r\n"
        for p in paths
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def service(bundle: Path, paths: list[Path], per_request: int, clients: int) -> dict[str, Any]:
    """Every file through POST /score, `per_request` files a request, `clients` threads."""
    port = free_port()
    cmd = [*VIGIL, "serve", "--bundle", str(bundle), "--port", str(port)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    memory = PeakMemory(proc.pid)
    try:
        _ready(port, proc)
        ready = time.perf_counter()
        chunks = [paths[i : i + per_request] for i in range(0, len(paths), per_request)]
        local = threading.local()
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

        def send(chunk: list[Path]) -> int:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            local.conn.request("POST", "/score", body=_multipart(chunk), headers=headers)
            response = local.conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"POST /score answered {response.status}: {body[:300]!r}")
            return len(chunk)

        with ThreadPoolExecutor(clients) as pool:
            scored = sum(pool.map(send, chunks))
        finished = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
    assert scored == len(paths)
    return {
        "seconds": finished - started,
        "peak_rss_mib": memory.stop() / 2**20,
        "job_images_s": len(paths) / (finished - ready),  # once ready: requests only
        "summary": [f"{len(chunks)} requests of {per_request}, {clients} client threads"],
    }


def ort_sweep(bundle: Path) -> list[dict[str, Any]]:
    """ONNX Runtime alone, in-process: microseconds per image by batch size and threads (the
    best of 5 passes over 1,024 images), which sets the default --batch-size."""
    manifest, model_path = load_bundle(bundle)
    spec, names = manifest.input, list(manifest.scores)
    images = np.random.default_rng(0).random((1024, spec.channels, spec.height, spec.width), np.float32)  # fmt: skip
    out = []
    for threads in (1, 0):
        session = create_session(model_path, ["CPUExecutionProvider"], threads, allow_spinning=False)  # fmt: skip
        for size in (16, 32, 64, 128, 256, 1024):
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for start in range(0, len(images), size):
                    run(session, images[start : start + size], names)
                best = min(best, time.perf_counter() - started)
            out.append({"threads": threads or "all", "batch": size, "us_per_image": 1e6 * best / len(images)})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 images")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vigil-batch-bench"))
    parser.add_argument("--only", nargs="*", help="contenders to run (default: all)")
    args = parser.parse_args()
    count = 10_000 if args.quick else args.images
    folder = args.workdir / f"pngs-{count}"
    paths = write_pngs(folder, count)
    out = args.workdir / "results"
    load_before = os.getloadavg()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    contenders = {
        "local": lambda: run_command(score_command(args.bundle, folder, out.with_suffix(".parquet"))),
        "ray-1": lambda: run_command(score_command(args.bundle, folder, out.with_name("ray-1"), "--ray", "--actors", "1"), env),
        "ray-2": lambda: run_command(score_command(args.bundle, folder, out.with_name("ray-2"), "--ray", "--actors", "2"), env),
        "service-32": lambda: service(args.bundle, paths, 32, 8),
    }  # fmt: skip
    rows = []
    for name, measure in contenders.items():
        if args.only and name not in args.only:
            continue
        result = measure()
        result.update(name=name, images=count, images_s=count / result["seconds"])
        print(f"{name}: {result['images_s']:,.0f} images/s, peak {result['peak_rss_mib']:,.0f} MiB")
        rows.append(result)
    for name in ("local", "ray-1", "ray-2"):
        produced = out.with_suffix(".parquet") if name == "local" else out.with_name(name)
        if produced.exists() and any(r["name"] == name for r in rows):
            assert pq.read_table(produced, columns=["path"]).num_rows == count, name
    print(table(rows, ["name", "images", "seconds", "images_s", "job_images_s", "peak_rss_mib"]))
    sweep = ort_sweep(args.bundle)
    print(table(sweep, ["threads", "batch", "us_per_image"]))
    save(
        "batch_speed",
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "images": count,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "bundle": str(args.bundle),
            "results": rows,
            "onnxruntime_alone": sweep,
        },
    )


if __name__ == "__main__":
    main()
