"""The `vigil` command: train, evaluate, calibrate, serve, score.

Each subcommand's flags live with what it runs (`training.cli`, `service.cli`). The
training commands import torch, so their module is imported only when one of them is
named (or for `vigil --help`): `vigil serve` runs in a serving-only install.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from vigil.core.errors import VigilError

TRAINING = ("train", "evaluate", "calibrate")
TRAIN_EXTRA = {"torch", "onnx", "onnxscript", "sklearn", "matplotlib", "tqdm"}
BATCH_EXTRA = {"pyarrow", "tqdm"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: where the help text does not already explain it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        silent = default is None or default is argparse.SUPPRESS or isinstance(default, bool)
        silent = silent or action.required
        if "default" in text or silent:
            return text
        return text + " (default: %(default)s)"


def _add_training(sub: Any, name: str) -> None:
    # The deliberate lazy import: training code imports torch.
    from vigil.training import cli

    builders = {
        "train": cli.add_train,
        "evaluate": cli.add_evaluate,
        "calibrate": cli.add_calibrate,
    }
    builders[name](sub, HelpFormatter)


def _add_serve(sub: Any, _: str) -> None:
    from vigil.service import cli  # the service's stack (FastAPI, ONNX Runtime): only to serve

    p = sub.add_parser(
        "serve", help="serve a bundle over HTTP (POST /score)", formatter_class=HelpFormatter
    )
    cli.add_arguments(p)
    p.set_defaults(run=cli.serve)


def _add_score(sub: Any, _: str) -> None:
    from vigil.batch import cli  # Parquet (pyarrow): only to score; Ray only with --ray

    cli.add_parser(sub, HelpFormatter, _ray_runner)


def _ray_runner() -> Callable[..., None]:
    from vigil.batch import ray_job  # Ray Data, imported once `vigil score --ray` has set it up

    return ray_job.score_ray


BUILDERS: dict[str, Callable[[Any, str], None]] = {
    **dict.fromkeys(TRAINING, _add_training),
    "serve": _add_serve,
    "score": _add_score,
}


def parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="vigil", description="Image anomaly detection with autoencoders."
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = argv[0] if argv and argv[0] in BUILDERS else None
    for name, build in BUILDERS.items():
        if named is None or named == name:  # only the named command's parser is built
            build(sub, name)
    return root


def _missing_extra(exc: ModuleNotFoundError, command: str) -> int:
    """Training or scoring commands in a serving-only install: say what to install, not a
    traceback."""
    extra = "batch" if command == "score" and exc.name in BATCH_EXTRA else "train"
    if exc.name not in (BATCH_EXTRA if extra == "batch" else TRAIN_EXTRA):
        raise exc
    print(f"vigil {command}: needs {exc.name}, from the {extra} extra: "
          f"pip install -e '.[{extra},cpu]'", file=sys.stderr)  # fmt: skip
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser(argv).parse_args(argv)
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, argv[0] if argv else "")
    started = time.time()
    try:
        code = int(args.run(args))
    except (VigilError, OSError) as exc:  # OSError: a missing file, a full disk, ...
        print(f"vigil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, args.command)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.command != "serve":
        print(f"done in {time.time() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
