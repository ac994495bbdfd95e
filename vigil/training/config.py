"""`vigil train`'s configuration: plain values with their defaults, each field's flag help beside it.

The command's flags are derived from these fields (`training.cli`), and so are the
training loop's and the network's configs (`fit_config`, `model_config`): every option
and its default is defined here once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.core.bundle import InputSpec
from vigil.core.calibration import check_verdict
from vigil.core.score_names import PRIMARY, score_names
from vigil.training.head import HeadConfig
from vigil.training.models import Kind, ModelConfig
from vigil.training.train import FitConfig

DEFAULT_EPOCHS = 30
MIN_STEPS = 1800  # Fashion-MNIST (66 steps an epoch) keeps 30 epochs
# The step floor is for small sets; the epochs it adds stop at this many pixels seen, about
# a minute of the autoencoder's training on 2 cores, so that a large set of large images
# (3,000 Fashion-MNIST images upscaled to 64x64: 55 epochs, 2+ minutes) keeps 30 epochs.
FLOOR_PIXELS = 200_000_000
MAX_EPOCHS = 300
DEFAULT_CAL_FRACTION = 0.2
MAX_CAL_FRACTION = 0.4
# Calibration images per verdict score, in units of 1 / target FPR: with 25 / target the
# realised FPR's sd from calibration alone is about a fifth of the target (0.2 points at
# 1 %), so it lands within +-0.5 points. Large sets give calibration up to that many, as
# long as training keeps MIN_TRAIN_IMAGES (benchmarks/QUALITY_NOTES.md, goal 4).
PRECISE_CALIBRATION = 25
MIN_TRAIN_IMAGES = 3000
# Inputs from this size (the shorter side, in pixels) get the local detectors by default.
LOCAL_MIN_SIDE = 48


def option(help: str, **argparse: Any) -> Any:
    """A field that is also a `vigil train` flag: its help, and argparse extras (choices...)."""
    default = argparse.pop("default", dataclasses.MISSING)
    return field(default=default, metadata={"help": help, **argparse})


@dataclass(frozen=True)
class TrainConfig:
    """Every option of `vigil train`, with its default."""

    data: str = option(
        "'fashion-mnist' (the Debian dataset-fashion-mnist folder), a folder of images (PNG, "
        "JPEG, BMP, GIF, TIFF, WebP; searched recursively), a folder or file in IDX format, "
        "or .npy/.npz"
    )
    out: Path = option("bundle directory to write")
    model: str = option("autoencoder or variational autoencoder", default="vae", choices=("ae", "vae"))  # fmt: skip
    normal_class: int | None = option(
        "for labelled data: the class that is normal (default: all images are normal)",
        default=None,
    )
    anomaly_data: str | None = option(
        "images known to be anomalous, for evaluation only (default: for labelled data, the "
        "other classes)",
        default=None,
    )
    image_size: tuple[int, int] | None = option(
        "model input size N or HxW (default: the data's size, capped at 64 for folders; "
        "for tiled images the frame size)",
        default=None,
        metavar="HxW",
    )
    color_mode: str | None = option(
        "grayscale or RGB (default: from the data)", default=None, choices=("L", "RGB")
    )
    latent_dim: int = option("latent dimensions", default=16)
    base_width: int = option("channels of the first conv layer (doubles per stage)", default=8)
    beta: float | None = option(
        "KL weight of the VAE; beta != 1 makes a beta-VAE (default 1)", default=None
    )
    loss: str = option("reconstruction loss", default="bce", choices=("mse", "bce"))
    denoise: float = option(
        "train as a denoising AE: Gaussian noise of this std on the input",
        default=0.0,
        metavar="SIGMA",
    )
    epochs: int | None = option(
        f"maximum epochs (default: {DEFAULT_EPOCHS}, more for small data sets so that "
        f"training takes at least ~{MIN_STEPS} steps, as long as it sees no more than "
        f"{FLOOR_PIXELS:.0e} pixels)",
        default=None,
    )
    batch_size: int = option("images per step", default=64)
    lr: float = option("Adam learning rate", default=1e-3)
    patience: int = option(
        "stop after this many epochs without a better validation loss", default=5
    )
    val_fraction: float = option(
        "share of normal images held out for validation / early stopping", default=0.1
    )
    cal_fraction: float | None = option(
        f"share of normal images held out to calibrate thresholds (default: "
        f"{DEFAULT_CAL_FRACTION}, raised up to {MAX_CAL_FRACTION} for small sets until the "
        f"split supports --target-fpr, and for large sets toward {PRECISE_CALIBRATION} / "
        f"--target-fpr images a verdict score while training keeps {MIN_TRAIN_IMAGES})",
        default=None,
    )
    target_fpr: float = option(
        "false-positive rate the thresholds are calibrated for", default=0.01
    )
    verdict: tuple[str, ...] = option(
        "scores whose union decides the verdict, the target FPR split equally between them "
        f"(e.g. `{PRIMARY} spectrum`: the part check or the camera check)",
        default=(PRIMARY,),
        nargs="+",
        metavar="SCORE",
    )
    tile_size: int | None = option(
        "score images by TILE x TILE tiles at their own resolution (default: 64 for images "
        "larger than 128 px without --image-size; 0: never tile, resize instead)",
        default=None,
    )
    tile_stride: int | None = option("tile stride (default: half the tile)", default=None)
    local: str = option(
        "local detectors for small defects: the local anomaly maps (score `local`), the "
        f"defect head (`defect`) and their sum (`heatmap`); auto: on for inputs of at least {LOCAL_MIN_SIDE} px a side "
        "(tiles included), off for smaller ones, whose defects the image-wide scores see",
        default="auto",
        choices=("auto", "on", "off"),
    )
    head_steps: int = option(
        "training steps of the defect head (a small segmentation net trained on synthetic "
        "defects drawn on the normal images; the `defect` score)",
        default=HeadConfig.head_steps,
    )
    head_width: int = option("channels of the defect head's first layer", default=8)
    seed: int = option("seed for splits, init and batches", default=0)
    max_images: int | None = option(
        "use at most this many normal images (default: all)", default=None
    )
    name: str | None = option("model name in the manifest (default: out's name)", default=None)
    report: bool = option("write the HTML report", default=True)
    progress: bool = True  # the progress bar; no flag (tests and benchmarks turn it off)

    @property
    def kind(self) -> Kind:
        if self.model == "vae" and self.beta not in (None, 1.0):
            return "beta-vae"
        return "vae" if self.model == "vae" else "ae"

    @property
    def beta_value(self) -> float:
        return 1.0 if self.beta is None else self.beta

    def max_epochs(self, train_images: int, pixels: int) -> int:
        """--epochs, or by default 30 epochs but at least ~1800 optimiser steps (at most 300
        epochs, and no more than FLOOR_PIXELS of images of `pixels` each): a folder of 200
        images needs more epochs than 6000 Fashion-MNIST images."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = max(1, -(-train_images // self.batch_size))
        floor = -(-MIN_STEPS // steps_per_epoch)
        affordable = FLOOR_PIXELS // max(1, train_images * pixels)
        return min(MAX_EPOCHS, max(DEFAULT_EPOCHS, min(floor, affordable)))

    def calibration_fraction(self, images: int) -> float:
        """--cal-fraction, or 0.2 raised for either of two reasons.

        Small sets: up to 0.4, until the calibration split supports the target FPR for the
        verdict's scores at all (300 images at 0.01 need 99 calibration images, not 60;
        198 for two verdict scores). Large sets: toward PRECISE_CALIBRATION / target images
        a verdict score, which hold the realised FPR near the target, as far as training
        keeps MIN_TRAIN_IMAGES (6,000 images at 0.01: 2,400, not 1,200).
        """
        if self.cal_fraction is not None:
            return self.cal_fraction
        images = max(images, 1)
        per_target = len(self.verdict) / self.target_fpr
        supported = min(MAX_CAL_FRACTION, math.ceil(per_target - 1.0 - 1e-9) / images)
        spare = images - round(images * self.val_fraction) - MIN_TRAIN_IMAGES
        precise = min(math.ceil(PRECISE_CALIBRATION * per_target - 1e-9), spare) / images
        return max(DEFAULT_CAL_FRACTION, supported, precise)

    def fit_config(self, train_images: int, pixels: int) -> FitConfig:
        """The training loop's config: the fields it shares with this one, by name."""
        epochs = self.max_epochs(train_images, pixels)
        return _derive(FitConfig, self, epochs=epochs, beta=self.beta_value)

    def local_detectors(self, spec: InputSpec) -> bool:
        """Whether the graph gets the local maps and the defect head (--local)."""
        if self.local == "auto":
            return min(spec.height, spec.width) >= LOCAL_MIN_SIDE
        return self.local == "on"

    def verdict_scores(self, spec: InputSpec) -> list[str]:
        """--verdict, checked against the scores this model's graph computes (before any
        training, so a typo costs nothing)."""
        computed = score_names(variational=self.kind != "ae", local=self.local_detectors(spec))
        return check_verdict(self.verdict, computed)

    def head_config(self) -> HeadConfig:
        """The defect head's training config: the fields it shares with this one, by name."""
        return _derive(HeadConfig, self)

    def model_config(self, spec: InputSpec) -> ModelConfig:
        """The network's config: the fields it shares with this one, the input's shape."""
        return _derive(
            ModelConfig,
            self,
            kind=self.kind,
            channels=spec.channels,
            height=spec.height,
            width=spec.width,
            beta=self.beta_value,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values, for the manifest."""
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
        }


def _derive(cls: Any, source: Any, **overrides: Any) -> Any:
    """An instance of dataclass `cls` from `source`'s fields of the same names, and overrides."""
    names = {f.name for f in dataclasses.fields(cls)}
    shared = {
        f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.name in names
    }
    return cls(**{**shared, **overrides})
