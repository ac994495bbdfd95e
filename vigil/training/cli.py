"""The training commands' flags: `vigil train`, `vigil evaluate`, `vigil calibrate`.

`vigil train`'s flags, their help and defaults are TrainConfig's fields; `evaluate` and
`calibrate` reuse its data flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from vigil.training import evaluate_cli
from vigil.training.calibrate import recalibrate
from vigil.training.config import TrainConfig
from vigil.training.data import read_images
from vigil.training.pipeline import run

DATA_FIELDS = ("data", "normal_class", "anomaly_data")


def image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, not {text!r}") from exc
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, not {text!r}")
    return (sizes[0], sizes[-1])


def target_fpr(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"target FPR must lie in (0, 1), not {text}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text}")
    return value


# Flag types that are not the field's own type.
PARSERS: dict[str, Any] = {
    "image_size": image_size,
    "target_fpr": target_fpr,
    "verdict": str,
    "head_steps": positive,
    "head_width": positive,
}


def add_config_flags(parser: argparse.ArgumentParser, names: typing.Iterable[str]) -> None:
    """TrainConfig's fields `names` as flags, with their help and default."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in names:
        f = fields[name]
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        flag = "--" + name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        if f.type in ("bool", bool):
            parser.add_argument(
                f"--no-{name.replace('_', '-')}" if default else flag,
                dest=name, action="store_false" if default else "store_true",
                help=f"do not {f.metadata['help']}" if default else f.metadata["help"],
            )  # fmt: skip
            continue
        parser.add_argument(
            flag,
            dest=name,
            type=PARSERS.get(name, _flag_type(f)),
            required=required,
            default=default,
            help=f.metadata["help"],
            **extra,
        )


def _flag_type(f: dataclasses.Field[Any]) -> Any:
    """The field's type without `| None` (fields' annotations are strings here)."""
    hints = typing.get_type_hints(TrainConfig)
    kind = hints[f.name]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def add_train(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "train", help="train a model on normal images and write a bundle", formatter_class=formatter
    )
    config_flags = [f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    add_config_flags(p, config_flags)
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    # nargs="+" flags parse to lists; the frozen config keeps tuples
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
    }
    run(TrainConfig(**{k: v for k, v in values.items() if k in names}))
    return 0


def add_evaluate(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="one-class evaluation of a bundle, with a report",
        formatter_class=formatter,
    )
    p.add_argument("--bundle", type=Path, help="bundle to evaluate")
    add_config_flags(p, DATA_FIELDS)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report and JSON (default: BUNDLE/report, or "
        "evaluation/ with --all-classes)",
    )
    p.add_argument(
        "--all-classes",
        action="store_true",
        help="train and evaluate one model per class with default settings; print the table",
    )
    add_config_flags(p, ["model", "epochs", "head_steps", "seed"])
    p.add_argument(
        "--classes", type=int, nargs="*", default=None, help="with --all-classes: only these"
    )
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    if args.all_classes:
        return evaluate_cli.evaluate_all_classes(args)
    if args.bundle is None:
        raise SystemExit("vigil evaluate: --bundle is required (or use --all-classes)")
    return evaluate_cli.evaluate_one(args)


def add_calibrate(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="recalibrate a bundle's thresholds on new normal images",
        formatter_class=formatter,
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle to recalibrate")
    add_config_flags(p, DATA_FIELDS[:2])
    p.add_argument(
        "--target-fpr",
        type=target_fpr,
        default=None,
        help="new target FPR (default: keep the bundle's)",
    )
    p.add_argument(
        "--verdict",
        nargs="+",
        default=None,
        metavar="SCORE",
        help="new verdict scores, the target FPR split equally between them (e.g. "
        "`overall spectrum`; default: keep the bundle's)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the new version here (default: in place, old manifest kept)",
    )
    p.set_defaults(run=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    normals = read_images(args.data, "train")
    if args.normal_class is not None:
        normals = normals.of_class(args.normal_class)
    target, manifest = recalibrate(args.bundle, normals, args.target_fpr, args.out, args.verdict)
    cal = manifest.calibration
    print(
        f"{target}: version {manifest.version}, calibrated on {cal.n} images from "
        f"{cal.data_source} at target FPR {cal.target_fpr:g}, verdict "
        f"{' or '.join(cal.verdict_scores)}"
    )
    return 0
