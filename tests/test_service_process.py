"""A real `vigil serve` process (torch blocked), and the torch-free import of the service."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_service_support import blob, encode, metric, metric_samples

ROOT = Path(__file__).resolve().parents[1]
# Make `import torch` fail in the child, whatever is installed.
NO_TORCH = "import sys; sys.modules['torch'] = None; "


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_service_imports_without_torch() -> None:
    done = run_python(
        "import vigil.service.app, vigil.service.cli, vigil.service.model, vigil.service.batching; "
        "from vigil.cli import parser; parser(['serve', '--bundle', 'x']); "
        "from vigil.service.app import create_app; from vigil.service.settings import Settings; "
        "create_app(Settings(bundle='x')); "
        "assert sys.modules['torch'] is None; print('ok')"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(vae_bundle: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_PROVIDERS="CPUExecutionProvider",
        VIGIL_MAX_BATCH="4",
        VIGIL_INTRA_OP_THREADS="1",
        VIGIL_MAX_BODY_BYTES="100000",
        VIGIL_PORT="1",  # the flag overrides it
    )
    command = [
        sys.executable, "-c", NO_TORCH + "from vigil.cli import main; sys.exit(main())",
        "serve", "--bundle", str(vae_bundle), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_until(
    check: object, timeout: float, what: str, process: subprocess.Popen[str], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"vigil serve exited:\n{log.read_text()}"
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")


def raw_request(
    base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> int:
    """A request over a plain socket (http.client), e.g. with a lying Content-Length."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body is not None:
            conn.send(body)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
def test_real_server_scores_reloads_and_stops(
    server: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, base, log = server
    with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 60, "/readyz", process, log)
        response = client.post("/score", files=[("files", ("a.png", encode(blob()), "image/png"))])
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["filename"] == "a.png"
        # a lying Content-Length is refused before any body is sent
        assert (
            raw_request(
                base, "POST", "/score", {"Content-Type": "image/png", "Content-Length": "10000000"}
            )
            == 413
        )
        # a chunked body is refused once it passes the limit
        chunk = b"0" * 65536
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        status = raw_request(
            base,
            "POST",
            "/score",
            {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
            chunked,
        )
        assert status == 413
        assert (
            client.post(
                "/score", content=encode(blob()), headers={"Content-Type": "image/png"}
            ).status_code
            == 200
        )

        def reloads() -> float:
            return metric(
                metric_samples(client.get("/metrics").text),
                "vigil_reloads_total",
                outcome="success",
            )

        assert reloads() == 0
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads() == 1, 30, "the SIGHUP reload", process, log)
        assert client.get("/readyz").status_code == 200
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says
    # "stopped by SIGTERM" (143 in a shell), as a process killed by it would
    assert process.wait(30) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Application shutdown complete" in text and "vigil.app: stopped" in text
    assert "one worker" in text and "Traceback" not in text
    assert "reloading" in text and text.count("loaded vae version 1") == 2
