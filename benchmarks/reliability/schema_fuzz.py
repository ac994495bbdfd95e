"""Schema fuzzing: schemathesis against a running `vigil serve`'s own OpenAPI document.

Every operation of /openapi.json is exercised with schema-valid and schema-invalid requests
(all of schemathesis' phases and checks, plus Vigil's, see `schema_hooks`): every answer
must have a documented status, the one error shape, and conform to the declared schema;
schema-valid requests must be accepted and invalid ones refused; no 5xx. The server runs
with small limits (4 files, 64 KiB bodies, 64x64 pixels... as set below) so that the
fuzzer reaches them, and with an admin token the fuzzer is given, so that reloads are
fuzzed past authentication too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.reliability.server import ROOT, start

TOKEN = "fuzz-admin-token-3b9d"
LIMITS = {
    "VIGIL_MAX_FILES": "4",
    "VIGIL_MAX_BODY_BYTES": str(64 * 1024),
    "VIGIL_MAX_IMAGE_PIXELS": str(64 * 64),
}


def schema_fuzz(
    bundle: Path, workdir: Path, max_examples: int, max_time_s: int, seed: int = 1
) -> dict[str, Any]:
    """One schemathesis run against a fresh server of `bundle` (a models folder is made
    beside it in `workdir`); its report, the answers per status, and the server's exit."""
    models = workdir / "models"
    models.mkdir(exist_ok=True)
    served = models / bundle.name
    if not served.exists():
        served.symlink_to(bundle.resolve(), target_is_directory=True)
    env = {
        "VIGIL_ADMIN_TOKEN": TOKEN,
        "VIGIL_MODELS_DIR": str(models),
        "VIGIL_DRAIN_S": "0",
        **LIMITS,
    }
    server = start(served, workdir / "schema-fuzz.log", env)
    report = workdir / "schemathesis.json"
    tally = workdir / "tally.json"
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{server.base}/openapi.json",
        "--checks", "all", "--mode", "all", "--max-examples", str(max_examples),
        "--max-time", str(max_time_s), "--seed", str(seed), "--workers", "1",
        "--generation-database", "none", "--no-color", "--request-timeout", "30",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    secrets = [TOKEN, str(models.resolve()), str(bundle.resolve().parent)]
    hooks_env = {
        **os.environ,
        **LIMITS,
        "SCHEMATHESIS_HOOKS": "benchmarks.reliability.schema_hooks",
        "PYTHONPATH": str(ROOT),
        "VIGIL_FUZZ_TALLY": str(tally),
        "VIGIL_FUZZ_SECRETS": os.pathsep.join(secrets),
    }
    try:
        run = subprocess.run(
            command, cwd=workdir, env=hooks_env, capture_output=True, text=True,  # its cache there
            timeout=max_time_s + 600,
        )  # fmt: skip
    finally:
        returncode = server.stop(signal.SIGTERM)
    data = json.loads(report.read_text()) if report.exists() else {}
    answers = json.loads(tally.read_text()) if tally.exists() else {}
    return {
        "exit_code": run.returncode,
        "test_cases": data.get("test_cases", {}),
        "operations": data.get("operations", {}),
        "failures": data.get("failures", []),
        "errors": data.get("errors", []),
        "warnings": {k: v for k, v in data.get("warnings", {}).items() if v},
        "seconds": round(data.get("running_time", 0.0), 1),
        "answers": answers,
        "answers_5xx": sum(n for k, n in answers.items() if k.rsplit(" ", 1)[1].startswith("5")),
        "server_returncode": returncode,
        "server_traceback": "Traceback" in server.log.read_text(),
        "output": run.stdout[-6000:] + run.stderr[-2000:],
    }
