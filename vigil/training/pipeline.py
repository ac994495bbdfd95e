"""`vigil train` end to end: read → split → fit → fit score statistics → bundle → evaluate → report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vigil.core.bundle import DECODER_FILE, InputSpec, Manifest, Tiling, write_manifest
from vigil.core.calibration import check_fpr, min_fpr
from vigil.training import tiles
from vigil.training.bundle import write_bundle
from vigil.training.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    Images,
    infer_spec,
    read_images,
    split_indices,
    to_inputs,
)
from vigil.training.evaluate import Evaluation, evaluate_bundle
from vigil.training.models import AutoEncoder, Kind, ModelConfig
from vigil.training.scores import ScoreGraph
from vigil.training.train import FitConfig, fit, seed_everything

DEFAULT_EPOCHS = 30
MIN_STEPS = 1800  # Fashion-MNIST (66 steps an epoch) keeps 30 epochs
DEFAULT_CAL_FRACTION = 0.2
MAX_CAL_FRACTION = 0.4
MAX_LOCAL_FIT = 1000  # training images (or tiles) the local maps' Gaussians are fitted on


@dataclass(frozen=True)
class TrainConfig:
    """Every option of `vigil train`, with its default."""

    data: str
    out: Path
    model: str = "vae"
    normal_class: int | None = None
    anomaly_data: str | None = None
    image_size: tuple[int, int] | None = None
    color_mode: str | None = None
    latent_dim: int = 16
    base_width: int = 8
    beta: float | None = None
    loss: str = "bce"
    denoise: float = 0.0
    epochs: int | None = None  # None: 30, or more for small data sets (see max_epochs)
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 5
    val_fraction: float = 0.1
    cal_fraction: float | None = None  # None: 0.2, more for small sets (see calibration_fraction)
    target_fpr: float = 0.01
    tile_size: int | None = None  # None: tile images larger than 128 px by 64 px tiles; 0: never
    tile_stride: int | None = None  # None: half the tile
    seed: int = 0
    max_images: int | None = None
    name: str | None = None
    report: bool = True
    progress: bool = True

    @property
    def kind(self) -> Kind:
        if self.model == "vae" and self.beta not in (None, 1.0):
            return "beta-vae"
        return "vae" if self.model == "vae" else "ae"

    def max_epochs(self, train_images: int) -> int:
        """--epochs, or by default 30 epochs but at least ~1800 optimiser steps (at most 300
        epochs): a folder of 200 images needs more epochs than 6000 Fashion-MNIST images."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = max(1, -(-train_images // self.batch_size))
        return min(300, max(DEFAULT_EPOCHS, -(-MIN_STEPS // steps_per_epoch)))

    def fit_config(self, train_images: int) -> FitConfig:
        return FitConfig(
            epochs=self.max_epochs(train_images),
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            beta=1.0 if self.beta is None else self.beta,
            loss=self.loss,
            denoise=self.denoise,
            seed=self.seed,
            progress=self.progress,
        )


def calibration_fraction(cfg: TrainConfig, n: int) -> float:
    """--cal-fraction, or 0.2 raised (up to MAX_CAL_FRACTION) until the calibration split
    supports the target FPR: 300 images at 0.01 need 99, not 60."""
    if cfg.cal_fraction is not None:
        return cfg.cal_fraction
    needed = math.ceil(1.0 / cfg.target_fpr - 1.0 - 1e-9)
    return min(MAX_CAL_FRACTION, max(DEFAULT_CAL_FRACTION, needed / max(n, 1)))


def normal_images(cfg: TrainConfig) -> Images:
    images = read_images(cfg.data, "train")
    if cfg.normal_class is not None:
        images = images.of_class(cfg.normal_class)
    if len(images) == 0:
        raise DataError(f"{cfg.data}: no images of class {cfg.normal_class}")
    if cfg.max_images is not None and len(images) > cfg.max_images:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(images))[: cfg.max_images])
        images = images.select(keep)
    return images


def held_out_anomalies(cfg: TrainConfig, limit: int) -> Images | None:
    """Anomalies for the training report: --anomaly-data, else other classes of a labelled set."""
    if cfg.anomaly_data:
        return read_images(cfg.anomaly_data, "test")
    if cfg.normal_class is None:
        return None
    others = read_images(cfg.data, "test").of_class(cfg.normal_class, keep=False)
    keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(others))[:limit])
    return others.select(keep)


def run(cfg: TrainConfig) -> tuple[Manifest, Evaluation]:
    seed_everything(cfg.seed)
    images = normal_images(cfg)
    try:
        tiling = tiles.plan(images, cfg.image_size, cfg.tile_size, cfg.tile_stride)
    except ValueError as exc:
        raise DataError(f"{images.source}: {exc}") from exc
    if tiling is None:
        spec = infer_spec(images, cfg.image_size, cfg.color_mode)
        frame_spec = spec
    else:
        size = (tiling.frame_height, tiling.frame_width)
        frame_spec = infer_spec(images, size, cfg.color_mode)
        spec = tiles.tile_spec(frame_spec, cfg.tile_size or tiles.DEFAULT_TILE)
    cal_fraction = calibration_fraction(cfg, len(images))
    splits = split_indices(len(images), cfg.seed, cfg.val_fraction, cal_fraction)
    target_fpr, note = supported_target(cfg.target_fpr, len(splits.cal))
    print(
        f"{len(images)} normal images from {images.source}, {frame_spec.channels}x"
        f"{frame_spec.height}x{frame_spec.width} {spec.color_mode}; split {splits.sizes()}"
    )
    if tiling is not None:
        print(
            f"tiling: {spec.height}x{spec.width} tiles, stride {tiling.stride_height}, "
            f"{count_tiles(frame_spec, spec, tiling)} tiles per image; image score = max over tiles"
        )
    if note:
        print(f"WARNING: {note}")
    frames = torch.from_numpy(to_inputs(images, frame_spec))
    if tiling is None:
        x = frames
        train_x, val_x = x[splits.train], x[splits.val]
    else:
        train_x = torch.from_numpy(
            tiles.random_tiles(
                frames[splits.train].numpy(), spec.height, tiles.TRAIN_TILES, cfg.seed
            )
        )
        val_x = torch.from_numpy(
            tiles.random_tiles(
                frames[splits.val].numpy(), spec.height, tiles.VAL_TILES, cfg.seed + 1
            )
        )
    model_cfg = ModelConfig(
        kind=cfg.kind,
        channels=spec.channels,
        height=spec.height,
        width=spec.width,
        latent_dim=cfg.latent_dim,
        base_width=cfg.base_width,
        beta=1.0 if cfg.beta is None else cfg.beta,
    )
    model = AutoEncoder(model_cfg)
    history = fit(model, train_x, val_x, cfg.fit_config(len(train_x)))
    graph = fit_statistics(ScoreGraph(model), train_x, val_x)
    training = {
        "data_source": images.source,
        "normal_class": cfg.normal_class,
        "split_sizes": splits.sizes(),
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch,
        "seed": cfg.seed,
        "seconds": round(history.seconds, 2),
        "device": history.device,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    name = cfg.name or cfg.out.name
    manifest = write_bundle(
        cfg.out,
        graph,
        spec,
        frames[splits.cal].numpy(),
        training,
        target_fpr,
        name,
        tiling=tiling,
        requested_target_fpr=cfg.target_fpr if note else None,
        note=note,
    )
    (cfg.out / "history.json").write_text(json.dumps(history.as_dict(), indent=1))
    print(f"bundle written to {cfg.out}")
    evaluation = evaluate_held_out(cfg, manifest, images.select(splits.val), history.epochs)
    return manifest, evaluation


def supported_target(target_fpr: float, n_cal: int, n_scores: int = 1) -> tuple[float, str | None]:
    """The target FPR, or the nearest one n_cal calibration images support, and why."""
    check_fpr(target_fpr, 10**9, n_scores)  # (0, 1)
    lowest = min_fpr(n_cal, n_scores)
    if target_fpr >= lowest:
        return target_fpr, None
    nearest = math.ceil(lowest * 10_000) / 10_000  # rounded up: still supported
    return nearest, (
        f"target FPR {target_fpr:g} is below {lowest:.3g}, the smallest that {n_cal} calibration "
        f"images support; calibrated for {nearest:g} instead (more normal images lower it)"
    )


def count_tiles(frame: InputSpec, spec: InputSpec, tiling: Tiling) -> int:
    from vigil.core.tiling import count

    return count(
        frame.height,
        frame.width,
        (spec.height, spec.width),
        (tiling.stride_height, tiling.stride_width),
    )


@torch.no_grad()
def fit_statistics(graph: ScoreGraph, train: torch.Tensor, val: torch.Tensor) -> ScoreGraph:
    """Latent density from the training codes; score standardisation from validation images."""
    graph.eval()
    device = next(graph.parameters()).device
    mu = torch.cat([graph.model.encode(b.to(device))[0] for b in train.split(512)])
    graph.fit_latent_density(mu)
    graph.fit_local(train[:MAX_LOCAL_FIT], val)
    parts = [graph.raw_scores(b.to(device))[0] for b in val.split(512)]
    graph.fit_standardisation({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    return graph.cpu()


def evaluate_held_out(
    cfg: TrainConfig, manifest: Manifest, val_normals: Images, history: list[dict[str, float]]
) -> Evaluation:
    """Evaluate on the validation normals and any held-out anomalies; record it in the bundle.

    Without anomalies the report still shows the training curves, the normal scores
    against their thresholds, reconstructions and the latent space.
    """
    anomalies = held_out_anomalies(cfg, limit=max(len(val_normals), 1000))
    evaluation = evaluate_bundle(cfg.out, val_normals, anomalies)
    manifest = manifest.model_copy(update={"evaluation": evaluation.summary()})
    write_manifest(cfg.out, manifest)
    primary = evaluation.metrics[manifest.primary_score]
    verdict = evaluation.verdict
    if "auroc" in primary:
        print(f"held-out evaluation: AUROC {primary['auroc']:.4f} ({manifest.primary_score}), "
              f"verdict FPR {verdict['fpr']:.3f}, TPR {verdict['tpr']:.3f}")  # fmt: skip
    else:
        print(f"held-out normals flagged: {verdict['fpr']:.3f} (no anomalies to measure against; "
              "pass --anomaly-data for AUROC)")  # fmt: skip
    if cfg.report:
        write_training_report(cfg.out / "report", cfg.out, evaluation, history, cfg.data)
    return evaluation


def write_training_report(
    out: Path,
    bundle: Path,
    evaluation: Evaluation,
    history: list[dict[str, float]] | None,
    data: str,
) -> Path:
    from vigil.training.report import write_report

    decoder = bundle / DECODER_FILE
    page = write_report(
        out,
        evaluation,
        history,
        decoder if decoder.exists() else None,
        class_names=FASHION_MNIST_CLASSES if data == "fashion-mnist" else None,
        title=f"Vigil report: {bundle.name}",
    )
    print(f"report: {page}")
    return page
