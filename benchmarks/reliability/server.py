"""A real `vigil serve` process on 127.0.0.1 for the reliability checks: start, probe, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.reliability.client import HOST

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        """One GET on a fresh connection: (status, body)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def rss_mib(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self, how: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def start(
    bundle: Path, log: Path, env: dict[str, str] | None = None, ready_s: float = 120
) -> Server:
    """`vigil serve --bundle BUNDLE` on a free port of 127.0.0.1, once /readyz answers 200.

    The environment's VIGIL_* variables are dropped; `env` sets the ones the check wants.
    """
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    clean.update({"VIGIL_PROVIDERS": "CPUExecutionProvider", **(env or {})})
    command = [sys.executable, "-m", "vigil.cli", "serve", "--bundle", str(bundle),
               "--host", HOST, "--port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=clean, stdout=out, stderr=out)
    server = Server(process, port, log)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vigil serve exited {process.returncode}:\n{log.read_text()}")
        try:
            if server.get("/readyz", timeout=2)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"vigil serve not ready in {ready_s} s:\n{log.read_text()}")
