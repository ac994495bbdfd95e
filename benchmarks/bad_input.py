"""Bad input costs nothing else: good-request throughput before and after floods of bad ones.

Against one `vigil serve` (defaults, 1 uvicorn worker) on 127.0.0.1, with `hey` at c = 32:
  1. good single-PNG requests (the baseline; 3 runs, the median),
  2. each kind of bad request in turn (a text file, a truncated PNG, a decompression bomb
     that declares 20,000 x 20,000 pixels, 65 files in one request, an empty multipart
     form), checking that every answer has the expected status; all of it twice, with
     the server's resident memory after each phase (a leak would keep growing),
  3. good requests again (3 runs, the median).
The service passes when every bad request got its 4xx, none a 5xx, and the good throughput
after the floods is that of before (within the run-to-run noise, see BENCHMARKS.md).

    .venv/bin/python benchmarks/bad_input.py --bundle models/default [--quick]

Needs `hey` (Debian: apt-get install hey). Writes benchmarks/results/bad_input.json.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save, table
from benchmarks.serve_speed import BOUNDARY, free_port, hey, multipart, start, test_pngs

CONCURRENCY = 32


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of zeros that declares side x side pixels; a few tens of KB."""
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")  # fmt: skip


def bad_bodies(good: bytes) -> dict[str, tuple[bytes, int]]:
    """name -> (multipart body, the status every answer must have)."""
    empty_form = f"--{BOUNDARY}--\r\n".encode()
    return {
        "not an image (415)": (multipart([b"hello, I am text\n" * 20]), 415),
        "truncated PNG (422)": (multipart([good[: len(good) // 2]]), 422),
        "decompression bomb (413)": (multipart([bomb_png()]), 413),
        "65 files (413)": (multipart([good] * 65), 413),
        "no files (422)": (empty_form, 422),
    }


def rss_mib(pid: int) -> float:
    """The server's resident memory (Linux): a leak per bad request would show here."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--quick", action="store_true", help="fewer requests per point")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("needs `hey` (Debian: apt-get install hey)")
    n_good, n_bad = (1024, 1024) if args.quick else (4096, 4096)
    good = test_pngs(1)[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        good_body = Path(tmp) / "good.bin"
        good_body.write_bytes(multipart([good]))
        port = free_port()
        proc = start("vigil", args.bundle, port)
        try:
            hey(port, good_body, 512, CONCURRENCY)  # warm-up
            # good throughput: 3 runs before and 3 after, so drift shows as spread
            phases = [(f"good, before ({i})", good_body, 200, n_good) for i in (1, 2, 3)]
            for flood in (1, 2):  # twice: a leak keeps growing, a high-water mark does not
                for name, (body, status) in bad_bodies(good).items():
                    path = Path(tmp) / f"bad-{len(phases)}.bin"
                    path.write_bytes(body)
                    phases.append((f"{name}, flood {flood}", path, status, n_bad))
            phases += [(f"good, after ({i})", good_body, 200, n_good) for i in (1, 2, 3)]
            for name, path, status, count in phases:
                result = hey(port, path, count, CONCURRENCY)
                rows.append({"phase": name, "expected": status, **result, "rss_mib": rss_mib(proc.pid)})  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    for row in rows:
        row["all_expected"] = set(row["codes"]) == {row["expected"]}
        print(row, flush=True)
    before = float(np.median([r["req_s"] for r in rows[:3]]))
    after = float(np.median([r["req_s"] for r in rows[-3:]]))
    summary = {
        "good_req_s_before": before,
        "good_req_s_after": after,
        "good_after_vs_before": after / before,
        "every_answer_as_expected": all(r["all_expected"] for r in rows),
        "any_5xx": any(code >= 500 for r in rows for code in r["codes"]),
        "rss_growth_mib": rows[-1]["rss_mib"] - rows[0]["rss_mib"],
        "rss_growth_second_flood_mib": rows[-4]["rss_mib"]
        - rows[-4 - len(bad_bodies(good))]["rss_mib"],
    }
    columns = ["phase", "expected", "req_s", "p50_ms", "p99_ms", "codes", "all_expected", "rss_mib"]
    print(table(rows, columns))
    print(", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in summary.items()))  # fmt: skip
    save(
        "bad_input",
        {"bundle": str(args.bundle), "concurrency": CONCURRENCY, "rows": rows, **summary},
    )


if __name__ == "__main__":
    main()
