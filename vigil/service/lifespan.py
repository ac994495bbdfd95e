"""The service's life: start-up load in the background, SIGHUP reloads, orderly shutdown.

The lifespan starts loading the bundle without waiting for it, so /healthz answers at
once and /readyz turns 200 only when the model is loaded and its batch shapes warmed
up. On shutdown it stops taking work, finishes the queued images and closes the batcher.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from vigil.service.model import ModelHolder
from vigil.service.settings import Settings

log = logging.getLogger("vigil.app")


class Lifespan:
    """What FastAPI's lifespan drives: the start-up load, SIGHUP reloads, shutdown."""

    def __init__(self, settings: Settings, holder: ModelHolder) -> None:
        self.settings = settings
        self.holder = holder
        self.tasks: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def __call__(self, _: FastAPI) -> AsyncIterator[None]:
        switch_interval = sys.getswitchinterval()
        # With Python's 5 ms, a finished batch can wait that long for the GIL (settings).
        sys.setswitchinterval(self.settings.switch_interval_ms / 1000)
        freeze_startup_objects()
        loader = asyncio.create_task(self.load_initial())
        uninstall = self.install_sighup()
        try:
            yield
        finally:
            uninstall()
            for task in [loader, *self.tasks]:
                task.cancel()
            await asyncio.gather(loader, *self.tasks, return_exceptions=True)
            await self.holder.close()
            sys.setswitchinterval(switch_interval)
            log.info("stopped")

    async def load_initial(self) -> None:
        try:
            if self.settings.bundle is None:
                log.error("no bundle configured: set VIGIL_BUNDLE or pass --bundle")
                return
            await self.holder.load(self.settings.bundle, reload=False)
        except Exception:
            pass  # logged by the holder; /readyz answers 503 with the reason
        finally:
            self.holder.first_load.set()

    async def reload(self) -> None:
        """Reload the current bundle path (SIGHUP); failures are logged and counted."""
        path = self.holder.path
        if path is None:
            log.error("reload requested, but no bundle is configured")
            return
        log.info("reloading %s", path)
        with suppress(Exception):  # logged and counted by the holder
            await self.holder.load(path)

    def spawn_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def install_sighup(self) -> Callable[[], None]:
        """Reload on SIGHUP (only possible from the main thread); returns the uninstaller."""
        hup = getattr(signal, "SIGHUP", None)
        if hup is None or threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(hup, self.spawn_reload)
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("cannot install a SIGHUP handler; use POST /admin/reload")
            return lambda: None

        def remove() -> None:
            loop.remove_signal_handler(hup)

        return remove


def freeze_startup_objects() -> None:
    """Move everything alive at start-up out of the cyclic GC's reach (gc.freeze).

    The imported libraries leave tens of thousands of long-lived objects that every full
    collection would scan again, pausing every request in flight (BENCHMARKS.md). Called
    before the first model loads, so a model (which a reload retires) is never frozen;
    frozen objects are still freed by reference counting, only cycles among them stay.
    No collection first: at this point one finds a dozen unreachable objects and costs
    ~50 ms of the cold start (BENCHMARKS.md).
    """
    gc.freeze()
