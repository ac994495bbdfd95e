"""The `vigil` command: train, evaluate, calibrate, serve.

torch is imported only by the training subcommands, so `vigil serve` runs without it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


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


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, not {text!r}") from exc
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, not {text!r}")
    return (sizes[0], sizes[-1])


def _fpr(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"target FPR must lie in (0, 1), not {text}")
    return value


def _data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        help=(
            "'fashion-mnist' (the Debian dataset-fashion-mnist folder), a folder of images "
            "(PNG, JPEG, BMP, GIF, TIFF, WebP; searched recursively), a folder or file in IDX format, or .npy/.npz"
        ),
    )
    p.add_argument(
        "--normal-class",
        type=int,
        default=None,
        help="for labelled data: the class that is normal (default: all images are normal)",
    )
    p.add_argument(
        "--anomaly-data",
        default=None,
        help="images known to be anomalous, for evaluation only (default: for labelled data, the other classes)",
    )


def add_train(sub: Any) -> None:
    from vigil.training.pipeline import TrainConfig

    d = TrainConfig(data="", out=Path())
    p = sub.add_parser(
        "train",
        help="train a model on normal images and write a bundle",
        formatter_class=HelpFormatter,
    )
    _data_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument(
        "--model",
        choices=["ae", "vae"],
        default=d.model,
        help="autoencoder or variational autoencoder",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=d.beta,
        help="KL weight of the VAE; beta != 1 makes a beta-VAE (default 1)",
    )
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help="latent dimensions")
    p.add_argument(
        "--base-width",
        type=int,
        default=d.base_width,
        help="channels of the first conv layer (doubles per stage)",
    )
    p.add_argument("--loss", choices=["mse", "bce"], default=d.loss, help="reconstruction loss")
    p.add_argument(
        "--denoise",
        type=float,
        default=d.denoise,
        metavar="SIGMA",
        help="train as a denoising AE: Gaussian noise of this std on the input",
    )
    p.add_argument(
        "--image-size",
        type=_size,
        default=None,
        metavar="HxW",
        help="model input size (default: the data's size, capped at 64 for folders; "
        "for tiled images the frame size)",
    )
    p.add_argument(
        "--color-mode",
        choices=["L", "RGB"],
        default=None,
        help="grayscale or RGB (default: from the data)",
    )
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default: 30, more for small data sets so that "
                        "training takes at least ~1800 steps)")  # fmt: skip
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many epochs without a better validation loss",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of normal images held out for validation / early stopping",
    )
    p.add_argument(
        "--cal-fraction",
        type=float,
        default=d.cal_fraction,
        help="share of normal images held out to calibrate thresholds (default: 0.2, raised "
        "up to 0.4 for small sets until the split supports --target-fpr)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="score images by TILE x TILE tiles at their own resolution (default: 64 for "
        "images larger than 128 px without --image-size; 0: never tile, resize instead)",
    )
    p.add_argument(
        "--tile-stride", type=int, default=None, help="tile stride (default: half the tile)"
    )
    p.add_argument(
        "--target-fpr",
        type=_fpr,
        default=d.target_fpr,
        help="false-positive rate the thresholds are calibrated for",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="use at most this many normal images (default: all)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed for splits, init and batches")
    p.add_argument("--name", default=None, help="model name in the manifest (default: out's name)")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML report")
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from vigil.training.pipeline import TrainConfig, run

    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    run(cfg)
    return 0


def add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="one-class evaluation of a bundle, with a report",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--bundle", type=Path, help="bundle to evaluate")
    _data_arguments(p)
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
    p.add_argument("--model", choices=["ae", "vae"], default="vae", help="with --all-classes")
    p.add_argument("--epochs", type=int, default=None, help="with --all-classes: maximum epochs")
    p.add_argument(
        "--classes", type=int, nargs="*", default=None, help="with --all-classes: only these"
    )
    p.add_argument("--seed", type=int, default=0, help="with --all-classes")
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from vigil.training.evaluate import evaluate_all_classes, evaluate_one

    if args.all_classes:
        return evaluate_all_classes(args)
    if args.bundle is None:
        raise SystemExit("vigil evaluate: --bundle is required (or use --all-classes)")
    return evaluate_one(args)


def add_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="recalibrate a bundle's thresholds on new normal images",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle to recalibrate")
    _data_arguments(p)
    p.add_argument(
        "--target-fpr", type=_fpr, default=None, help="new target FPR (default: keep the bundle's)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the new version here (default: in place, old manifest kept)",
    )
    p.set_defaults(run=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from vigil.training.calibrate import recalibrate
    from vigil.training.data import read_images

    normals = read_images(args.data, "train")
    if args.normal_class is not None:
        normals = normals.of_class(args.normal_class)
    target, manifest = recalibrate(args.bundle, normals, args.target_fpr, args.out)
    cal = manifest.calibration
    print(
        f"{target}: version {manifest.version}, calibrated on {cal.n} images from "
        f"{cal.data_source} at target FPR {cal.target_fpr:g}"
    )
    return 0


def add_serve(sub: Any) -> None:
    from vigil.service.cli import add_arguments

    p = sub.add_parser(
        "serve",
        help="serve a bundle over HTTP (POST /score)",
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from vigil.service.cli import serve

    return serve(args)


def parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="vigil", description="Image anomaly detection with autoencoders."
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = list(argv[:1])
    builders: dict[str, Callable[[Any], None]] = {
        "train": add_train,
        "evaluate": add_evaluate,
        "calibrate": add_calibrate,
        "serve": add_serve,
    }
    for name, build in builders.items():
        # Build only the chosen subcommand's parser when one is named: `vigil serve`
        # then never imports training code (or torch).
        if not wanted or wanted[0] not in builders or wanted[0] == name:
            build(sub)
    return root


TRAIN_EXTRA = {"torch", "onnx", "onnxscript", "sklearn", "matplotlib", "tqdm"}


def _missing_extra(exc: ModuleNotFoundError, command: str) -> int:
    """Training commands in a serving-only install: say what to install, not a traceback."""
    if exc.name not in TRAIN_EXTRA:
        raise exc
    print(f"vigil {command}: needs {exc.name}, from the train extra: "
          "pip install -e '.[train,cpu]'", file=sys.stderr)  # fmt: skip
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser(argv).parse_args(argv)
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, argv[0] if argv else "")
    from vigil.core.bundle import BundleError
    from vigil.core.calibration import CalibrationError
    from vigil.training.data import DataError

    errors = (BundleError, CalibrationError, DataError, FileNotFoundError)
    started = time.time()
    try:
        code = int(args.run(args))
    except errors as exc:
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
