"""The dependency audit (pip-audit on this environment, against the OSV database).

It runs where the database is reachable and fails on any known vulnerability; where it is
not (this project's build machines have no route to it), it skips and says why. The
second test holds the audit to that: an unreachable database is never read as clean.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.reliability.audit import audit


@pytest.mark.slow
def test_no_dependency_has_a_known_vulnerability() -> None:
    result = audit()
    if result["outcome"] == "unreachable":
        pytest.skip(f"vulnerability database unreachable, audit not done: {result['reason']}")
    assert result["outcome"] == "clean", result


@pytest.mark.slow
def test_an_unreachable_database_is_reported_as_such_never_as_clean() -> None:
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env = {**os.environ, "HTTPS_PROXY": closed, "https_proxy": closed, "NO_PROXY": ""}
    result = audit(env)
    assert result["outcome"] == "unreachable", result
    assert "Proxy" in result["reason"] or "Connection" in result["reason"]
