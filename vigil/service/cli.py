"""`vigil serve`: run the service under uvicorn, with exactly one worker.

Flags override the `VIGIL_*` environment (see `service.settings.Settings`). One worker per
process is a design choice (see `service.app`): batching happens inside the process; scale
with more processes / containers, one per GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vigil.service.settings import Settings

# flag -> (Settings field, type, help). Every default is None: "take the environment's".
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--bundle": ("bundle", Path, "bundle directory to serve (env VIGIL_BUNDLE)"),
    "--models-dir": (
        "models_dir",
        Path,
        "the only folder reloads may load from (env VIGIL_MODELS_DIR; default: the "
        "bundle's parent folder)",
    ),
    "--host": ("host", str, "address to listen on (env VIGIL_HOST; default 127.0.0.1)"),
    "--port": ("port", int, "port to listen on (env VIGIL_PORT; default 8000)"),
    "--providers": (
        "providers",
        str,
        "ONNX Runtime execution providers, comma-separated, in order of preference "
        "(env VIGIL_PROVIDERS; default CUDAExecutionProvider,CPUExecutionProvider)",
    ),
    "--intra-op-threads": (
        "intra_op_threads",
        int,
        "ONNX Runtime intra-op threads, 0 = one per CPU less one for the event loop "
        "(env VIGIL_INTRA_OP_THREADS)",
    ),
    "--max-batch": ("max_batch", int, "images per ONNX Runtime call (env VIGIL_MAX_BATCH)"),
    "--max-wait-ms": (
        "max_wait_ms",
        float,
        "longest wait for a batch to fill, in ms (env VIGIL_MAX_WAIT_MS)",
    ),
    "--target-fpr": (
        "target_fpr",
        float,
        "default target FPR (env VIGIL_TARGET_FPR; default: the bundle's)",
    ),
    "--log-level": ("log_level", str, "critical|error|warning|info|debug (env VIGIL_LOG_LEVEL)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `vigil serve` flags; each overrides its VIGIL_* environment variable."""
    for flag, (dest, kind, text) in _FLAGS.items():
        if "default" not in text:  # show the Settings default where the text does not explain it
            text = f"{text[:-1]}; default {Settings.model_fields[dest].default})"
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument(
        "--require-gpu",
        dest="require_gpu",
        action="store_const",
        const=True,
        default=None,
        help="stay not-ready unless the session runs on CUDA (env VIGIL_REQUIRE_GPU)",
    )
    parser.add_argument(
        "--no-batching",
        dest="batching",
        action="store_const",
        const=False,
        default=None,
        help="score each request on its own (env VIGIL_BATCHING=false)",
    )
    parser.add_argument(
        "--access-log",
        dest="access_log",
        action="store_const",
        const=True,
        default=None,
        help="log every request (env VIGIL_ACCESS_LOG)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    names = [dest for dest, _, _ in _FLAGS.values()] + ["require_gpu", "batching", "access_log"]
    overrides = {
        name: getattr(args, name) for name in names if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM / SIGINT; returns the exit status."""
    import uvicorn

    from vigil.core.bundle import BundleError, load_bundle
    from vigil.service.app import create_app

    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"vigil serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if settings.bundle is None:
        print("vigil serve: no bundle: pass --bundle DIR or set VIGIL_BUNDLE", file=sys.stderr)
        return 2
    try:
        load_bundle(settings.bundle)  # a wrong path or a broken bundle fails fast, not not-ready
    except BundleError as exc:
        print(f"vigil serve: error: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    logging.getLogger("vigil.cli").info(
        "serving %s on http://%s:%d with one worker (%s, %s)",
        settings.bundle,
        settings.host,
        settings.port,
        loop,
        http,
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,  # one worker per process, by design: batching happens inside it
        loop=loop,
        http=http,
        lifespan="on",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
