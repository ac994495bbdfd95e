"""The dependency audit: pip-audit on the environment Vigil runs in, against the OSV database.

Three outcomes, never confused: `clean` (the database answered: no known vulnerability),
`vulnerable` (it answered with some: each listed), `unreachable` (it did not answer: no
network, DNS, a proxy refusing; the audit says so and proves nothing). OSV rather than
pip-audit's default PyPI service: one vulnerability database, no package-index lookups.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

UNREACHABLE = (
    "ConnectionError",
    "NameResolutionError",
    "Max retries exceeded",
    "ProxyError",
    "ConnectTimeout",
    "ReadTimeout",
    "timed out",
)


def audit(env: dict[str, str] | None = None, timeout_s: int = 600) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).with_name("pip-audit")), "--vulnerability-service", "osv",
        "--format", "json", "--progress-spinner", "off", "--skip-editable", "--timeout", "20",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    try:
        report = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    if report is not None:
        found = [
            {
                "name": d["name"],
                "version": d["version"],
                "id": v["id"],
                "fix": v.get("fix_versions"),
            }
            for d in report.get("dependencies", [])
            for v in d.get("vulns", [])
        ]
        audited = len(report.get("dependencies", []))
        return {"outcome": "vulnerable" if found else "clean", "audited": audited, "vulnerabilities": found}  # fmt: skip
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    if any(marker in done.stderr for marker in UNREACHABLE):
        return {"outcome": "unreachable", "reason": last[:500]}
    return {"outcome": "error", "returncode": done.returncode, "reason": done.stderr[-2000:]}
