"""The SIGTERM drain: stop being chosen before stopping to answer.

A balancer (a Kubernetes Service, a proxy) learns that a replica is going away from its
readiness probe, some seconds after the replica learns it. Closing the listener at once,
as uvicorn does on SIGTERM, would refuse or cut the requests sent in those seconds, and it
closes idle keep-alive connections under clients that are writing their next request. So
on SIGTERM the service first drains:

1. `/readyz` answers 503 and `vigil_ready` drops to 0 at once (the `Drain` the app reads);
2. for `VIGIL_DRAIN_S` it keeps accepting and answering, and every answer carries
   `Connection: close`, so each client leaves its connection cleanly after its answer;
3. then the listener closes, requests in flight finish (and connections opened but not yet
   used get a moment for their first request, `service.protocol`), and the process exits,
   all within `VIGIL_SHUTDOWN_TIMEOUT_S` of the signal.

A second SIGTERM, or SIGINT (Ctrl-C: nobody's balancer is waiting), skips the drain;
uvicorn's own handling then applies (a further Ctrl-C forces the exit).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import struct
import time
from types import FrameType

import uvicorn

log = logging.getLogger("vigil.drain")

# At the end of the drain, how long the server still accepts the connections the kernel
# has already queued, and reads their first request, while new ones are held back (below).
SETTLE_S = 0.25
# A classic BPF socket filter that keeps no packet: on a listening socket (Linux) it drops
# new SYNs and handshakes, so the kernel queues no new connection. Closing a listener
# resets every connection still in its accept queue: clients that have already written
# their request on it get no answer. With the filter, the queue is accepted and served
# first, and a client whose SYN was dropped retries, is refused by the closed port, and
# knows that nothing was sent.
SO_ATTACH_FILTER = 26
DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K: return 0 bytes


class Drain:
    """Whether the service is draining; set from the signal handler, read per request."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None  # time.monotonic() of the SIGTERM

    @property
    def active(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        """Start draining (signal-handler safe: one assignment)."""
        if self.since is None:
            self.since = time.monotonic()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above between SIGTERM and its graceful shutdown."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, drain_s: float, shutdown_timeout_s: float
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        starts_drain = (
            sig == signal.SIGTERM
            and self.drain_s > 0
            and not self.should_exit
            and not self.drain.active
        )
        super().handle_exit(sig, frame)  # records the signal, re-raised once stopped
        if starts_drain:
            self.should_exit = False  # not yet: the drain comes first
            self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        since = self.drain.since
        if since is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                log.info(
                    "SIGTERM: not ready; draining for %.1f s (answers say Connection: close)",
                    self.drain_s,
                )
            if time.monotonic() - since >= self.drain_s:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = self.drain.since if self.drain.since is not None else time.monotonic()
        if self.drain.active:
            hold_back_new_connections(self.servers)
            await asyncio.sleep(SETTLE_S)  # accept and read what the kernel has queued
        # In-flight requests get what is left of VIGIL_SHUTDOWN_TIMEOUT_S since the signal.
        left = self.shutdown_timeout_s - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(0, int(left))
        await super().shutdown(sockets)


def hold_back_new_connections(servers: list[asyncio.base_events.Server]) -> None:
    """Stop the kernel queueing new connections on `servers`' listeners (Linux; elsewhere,
    or if refused, the listener simply closes later as uvicorn closes it)."""
    program = ctypes.create_string_buffer(DROP_ALL)  # copied by the kernel on attach
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    for server in servers:
        for listener in server.sockets:
            try:
                with socket.socket(fileno=os.dup(listener.fileno())) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            except OSError as exc:
                log.debug("cannot hold back new connections: %s", exc)
