"""Every reliability check in one command; `--full` for the full forms.

    .venv/bin/python -m benchmarks.reliability --full | tee benchmarks/results/reliability.log

Without --full, the sizes of the test suite's short forms. Needs a bundle (default
models/default: `./vigil.sh train`). Prints a table per check, writes
benchmarks/results/reliability.json (after each check; `complete` once every check has a
full-form entry, from one run or from several `--only` runs, and `ok` once each of those
passed), and exits 1 if any check failed. Only 127.0.0.1 is loaded; every check is bounded
in requests and time. The checks whose figures are timings (soak, sigterm, slow_clients) hold the lock
file /tmp/vigil-bench.lock while they run, so that they never overlap another benchmark
that takes it (`--lock ''`: no lock); the fuzzers and the rest run without it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import save, table
from benchmarks.reliability.audit import audit
from benchmarks.reliability.image_contract import CORPUS, fuzzer_command, seeds
from benchmarks.reliability.schema_fuzz import schema_fuzz
from benchmarks.reliability.server import ROOT
from benchmarks.reliability.shutdown import sigterm_under_load
from benchmarks.reliability.slow import slow_and_hanging_clients
from benchmarks.reliability.soak import soak

SIZES = {  # short (the test suite's) and full forms
    "soak_requests": (2_000, 100_000),
    "sigterm_tries": (1, 10),
    "slow_requests": (400, 4_000),
    "schema_examples": (10, 200),
    "schema_seconds": (40, 900),
    "image_fuzz_seconds": (20, 1_800),
}
FAULT_TESTS = [
    "tests/test_reliability_faults.py",
    "tests/test_reliability_bundles.py",
    "tests/test_reliability_security.py",
    "tests/test_reliability_drain.py",
]


def check_soak(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    seen = soak(bundle, work, size["soak_requests"], concurrency=16)  # the service's defaults
    p99 = [w["p99_ms"] for w in seen["windows"]]
    # Stable: the end of the run is no slower than its start after warm-up (the median p99
    # of the last three tenths against that of tenths 2-4). On a shared machine single
    # tenths spike with the neighbours' load; a leak or a degradation shows as a trend.
    seen["p99_trend"] = round(statistics.median(p99[7:]) / statistics.median(p99[1:4]), 2)
    seen["p99_max_over_median"] = round(max(p99[1:]) / statistics.median(p99[1:]), 2)
    seen["ok"] = (
        not seen["not_answered"] and seen["wrong_answers"] == 0 and seen["server_5xx"] == 0
        and seen["counters"]["all_equal"] and seen["rss_growth_pct"] < 5
        and seen["p99_trend"] <= 1.5
    )  # fmt: skip
    print(table(seen["windows"], ["window", "p50_ms", "p99_ms", "rss_mib"]))
    print(table([{"kind": k, "sent": n} for k, n in seen["by_kind"].items()], ["kind", "sent"]))
    return seen


def check_sigterm(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    tries = []
    for _ in range(size["sigterm_tries"]):
        seen = sigterm_under_load(bundle, work, concurrency=32, drain_s=2.0, shutdown_timeout_s=10)
        seen.pop("log")
        tries.append(seen)
    columns = ["answered_before_sigterm", "answered_after_sigterm", "not_answered_total",
               "answered_after_without_connection_close", "first_readyz_after_sigterm",
               "refused_after_listener_closed", "exit_s", "returncode"]  # fmt: skip
    print(table(tries, columns))
    ok = all(
        t["not_answered_total"] == 0 and t["answered_after_without_connection_close"] == 0
        and t["first_readyz_after_sigterm"][1] == 503 and t["exit_s"] <= t["shutdown_timeout_s"]
        for t in tries
    )  # fmt: skip
    return {"tries": tries, "ok": ok}


def check_slow(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    seen = slow_and_hanging_clients(bundle, work, slow=8, hangups=100, requests=size["slow_requests"])  # fmt: skip
    seen["ok"] = (
        seen["ordinary"] == {"200": size["slow_requests"]} and seen["server_5xx"] == 0
        and all(s == {"status": 200, "mid_body_when_load_ended": True} for s in seen["slow"])
        and seen["server_score_400"] == 100
    )  # fmt: skip
    print(json.dumps({k: v for k, v in seen.items() if k != "slow"} | {"slow": seen["slow"][:1]}))
    return seen


def check_schema(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    seen = schema_fuzz(bundle, work, size["schema_examples"], size["schema_seconds"])
    print(seen.pop("output"))
    seen["ok"] = seen["exit_code"] == 0 and not seen["failures"] and seen["answers_5xx"] == 0
    return seen


def check_images(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    seeds(work / "seeds")
    (work / "corpus").mkdir(exist_ok=True)
    command = fuzzer_command(
        f"-max_total_time={size['image_fuzz_seconds']}", "-timeout=10",
        "-rss_limit_mb=1024", f"-artifact_prefix={work}/", "-print_final_stats=1",
        str(work / "corpus"), str(work / "seeds"), str(CORPUS))  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    stats = {  # libFuzzer's -print_final_stats lines: "stat::NAME: VALUE"
        line[len("stat::") :].split(":")[0]: line.split(":")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("stat::")
    }
    found = sorted(p.name for p in work.iterdir() if p.name.split("-")[0] in ("crash", "oom", "timeout"))  # fmt: skip
    last = [line for line in done.stderr.splitlines() if re.match(r"#\d+\s", line)][-1:]
    print("\n".join([*last, f"findings: {found or 'none'}"]))
    return {
        "returncode": done.returncode,
        "stats": stats,
        "final": last[0] if last else "",
        "findings": found,
        "corpus_size": len(list((work / "corpus").iterdir())),
        "ok": done.returncode == 0 and not found,
    }


def check_faults(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *FAULT_TESTS],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr[-500:]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    print("\n".join([*failed, summary]))
    return {"pytest": summary, "failed": failed, "ok": done.returncode == 0}


def check_audit(bundle: Path, work: Path, size: dict[str, int]) -> dict[str, Any]:
    seen = audit()
    print(json.dumps(seen, indent=1))
    return {**seen, "ok": seen["outcome"] in ("clean", "unreachable")}


CHECKS: dict[str, Callable[[Path, Path, dict[str, int]], dict[str, Any]]] = {
    "soak": check_soak,
    "sigterm": check_sigterm,
    "slow_clients": check_slow,
    "schema_fuzz": check_schema,
    "image_fuzz": check_images,
    "faults": check_faults,
    "audit": check_audit,
}


TIMED = frozenset({"soak", "sigterm", "slow_clients"})
RESULT = ROOT / "benchmarks" / "results" / "reliability.json"


@contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (waiting for it), as `flock PATH command` does."""
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_full(results: dict[str, Any], bundle: Path, size: dict[str, int], partial: bool) -> None:
    """Write the full form's results; a partial run (--only) updates its checks' entries."""
    checks = dict(results)
    if partial and RESULT.exists():
        previous = json.loads(RESULT.read_text())
        checks = {name: previous[name] for name in CHECKS if name in previous} | results
    complete = set(checks) == set(CHECKS)  # every check has a full-form entry...
    passed = complete and all(check["ok"] for check in checks.values())  # ...and each is ok
    save("reliability", {"form": "full", "complete": complete, "ok": passed, "bundle": str(bundle), "sizes": size, **checks})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full forms (about an hour)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="run only these")
    parser.add_argument(
        "--lock", default="/tmp/vigil-bench.lock", help="lock file for the timed checks"
    )
    args = parser.parse_args()
    size = {name: pair[args.full] for name, pair in SIZES.items()}
    results: dict[str, Any] = {}
    for name in args.only or CHECKS:
        print(f"\n== {name} ({'full' if args.full else 'short'})", flush=True)
        started = time.perf_counter()
        with locked(args.lock if name in TIMED else ""), tempfile.TemporaryDirectory(prefix=f"vigil-{name}-") as work:  # fmt: skip
            results[name] = CHECKS[name](args.bundle, Path(work), size)
        results[name]["check_seconds"] = round(time.perf_counter() - started, 1)
        print(f"-> {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['check_seconds']} s", flush=True)  # fmt: skip
        results[name]["ran_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if args.full:  # the figures RELIABILITY.md quotes: full forms only
            save_full(results, args.bundle, size, partial=bool(args.only))
    print(table([{"check": k, "ok": v["ok"], "seconds": v["check_seconds"]} for k, v in results.items()], ["check", "ok", "seconds"]))  # fmt: skip
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
