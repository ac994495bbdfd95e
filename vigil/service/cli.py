"""`vigil serve`: run the service under uvicorn, with exactly one worker.

Every setting of `Settings` but the admin token (a secret: environment only, never in a
process listing) is also a flag that overrides its `VIGIL_*` variable; flags, their help
and defaults are derived from the settings' fields. One worker per process is a design
choice (see `service.app`): batching happens inside the process.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from vigil.core.bundle import BundleError, load_bundle
from vigil.service import protocol
from vigil.service.app import create_app
from vigil.service.drain import DrainingServer
from vigil.service.settings import Settings

ENV_ONLY = frozenset({"admin_token"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; each default is None: "take the environment's"."""
    for name, info in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        env = f"VIGIL_{name.upper()}"
        text = (info.description or name).rstrip(".")
        kind = _plain_type(info)
        if kind is bool:
            on = info.default is not True
            flag = f"--{'' if on else 'no-'}{name.replace('_', '-')}"
            parser.add_argument(
                flag, dest=name, action="store_const", const=on, default=None,
                help=f"{text if on else f'turn off {name}: {text}'} (env {env}={str(on).lower()})",
            )  # fmt: skip
            continue
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=str if choices else kind,
            choices=choices,
            default=None,
            help=f"{text} (env {env}{_default_text(info)})",
        )


def _plain_type(info: FieldInfo) -> Any:
    """The field's type without `| None`."""
    kind = info.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def _default_text(info: FieldInfo) -> str:
    if info.default is None:
        return ""
    return f"; default {info.default}"


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM / SIGINT; returns the exit status."""
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"vigil serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if settings.bundle is None:
        print("vigil serve: no bundle: pass --bundle DIR or set VIGIL_BUNDLE", file=sys.stderr)
        return 2
    try:
        load_bundle(Path(settings.bundle))  # a wrong path or broken bundle fails fast
    except BundleError as exc:
        print(f"vigil serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools"  # uvicorn[standard] brings it; `protocol` bounds request heads on it
    logging.getLogger("vigil.cli").info(
        "serving %s on http://%s:%d with one worker (%s, %s)",
        settings.bundle,
        settings.host,
        settings.port,
        loop,
        http,
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,  # one worker per process, by design: batching happens inside it
        loop=loop,
        http=protocol.limited(settings.max_header_bytes),
        lifespan="on",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
    server = DrainingServer(config, app.state.drain, settings.drain_s, settings.shutdown_timeout_s)
    server.run()
    return 0 if server.started else 1
