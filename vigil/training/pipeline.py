"""`vigil train` end to end: read → split → fit → fit score statistics → bundle → evaluate → report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vigil.core.bundle import MANIFEST_FILE, InputSpec, Manifest, Tiling, write_manifest
from vigil.core.calibration import supported_target
from vigil.core.publish import check_replaceable, staged
from vigil.core.score_names import PRIMARY
from vigil.core.tiling import count
from vigil.training import tiles
from vigil.training.bundle import write_bundle
from vigil.training.config import TrainConfig
from vigil.training.data import DataError, Images, infer_spec, read_images, split_indices, to_inputs
from vigil.training.evaluate import Evaluation, evaluate_bundle
from vigil.training.head import DefectHead, fit_head
from vigil.training.models import AutoEncoder
from vigil.training.report import write_bundle_report
from vigil.training.scores import ScoreGraph, layout_share
from vigil.training.train import fit, seed_everything

MAX_LOCAL_FIT = 1000  # training images (or tiles) the local maps' Gaussians are fitted on


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


@dataclass(frozen=True)
class Inputs:
    """What the model sees: the input spec, and for large images the frame and its tiling."""

    spec: InputSpec  # the graph's input: a whole image, or one tile
    frame: InputSpec  # an image as preprocessed (the spec itself unless tiled)
    tiling: Tiling | None

    def describe(self) -> str | None:
        if self.tiling is None:
            return None
        n = count(
            self.frame.height,
            self.frame.width,
            (self.spec.height, self.spec.width),
            (self.tiling.stride_height, self.tiling.stride_width),
        )
        return (
            f"tiling: {self.spec.height}x{self.spec.width} tiles, stride "
            f"{self.tiling.stride_height}, {n} tiles per image; image score = max over tiles"
        )


def plan_inputs(cfg: TrainConfig, images: Images) -> Inputs:
    """Resize whole images to the model's input, or keep large ones whole and tile them."""
    try:
        tiling = tiles.plan(images, cfg.image_size, cfg.tile_size, cfg.tile_stride)
    except ValueError as exc:
        raise DataError(f"{images.source}: {exc}") from exc
    if tiling is None:
        spec = infer_spec(images, cfg.image_size, cfg.color_mode)
        return Inputs(spec, spec, None)
    frame = infer_spec(images, (tiling.frame_height, tiling.frame_width), cfg.color_mode)
    return Inputs(tiles.tile_spec(frame, cfg.tile_size or tiles.DEFAULT_TILE), frame, tiling)


def run(cfg: TrainConfig) -> tuple[Manifest, Evaluation]:
    check_replaceable(cfg.out, MANIFEST_FILE)  # before the training, not after it
    seed_everything(cfg.seed)
    images = normal_images(cfg)
    inputs = plan_inputs(cfg, images)
    verdict = cfg.verdict_scores(inputs.spec)
    splits = split_indices(
        len(images), cfg.seed, cfg.val_fraction, cfg.calibration_fraction(len(images))
    )
    target_fpr, note = supported_target(cfg.target_fpr, len(splits.cal), len(verdict))
    frame = inputs.frame
    print(
        f"{len(images)} normal images from {images.source}, {frame.channels}x{frame.height}x"
        f"{frame.width} {frame.color_mode}; split {splits.sizes()}"
    )
    for line in (inputs.describe(), note and f"WARNING: {note}"):
        if line:
            print(line)
    frames = to_inputs(images, frame)
    train_x, val_x = training_tensors(frames, splits.train, splits.val, inputs, cfg.seed)
    model = AutoEncoder(cfg.model_config(inputs.spec))
    pixels = inputs.spec.height * inputs.spec.width
    history = fit(model, train_x, val_x, cfg.fit_config(len(train_x), pixels))
    local = cfg.local_detectors(inputs.spec)
    print(describe_local(local, inputs.spec, cfg))
    head, head_info = None, None
    if local:
        head = DefectHead(inputs.spec.channels, cfg.head_width)
        trained = fit_head(head, train_x, cfg.head_config())
        head_info = {"steps": trained.steps, "final_loss": round(trained.final_loss, 5),
                     "seconds": round(trained.seconds, 2)}  # fmt: skip
    graph = fit_statistics(ScoreGraph(model, head, local=local), train_x, val_x)
    chosen = graph.choose_overall(layout_share(frames[splits.train]), inputs.tiling is not None)
    print(f"primary score {PRIMARY}: {chosen}")
    training = {
        "data_source": images.source,
        "normal_class": cfg.normal_class,
        "split_sizes": splits.sizes(),
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch,
        "seed": cfg.seed,
        "seconds": round(history.seconds, 2),
        "head": head_info,
        "layout_share": round(graph.layout, 4) if graph.layout is not None else None,
        "device": history.device,
        "config": cfg.as_dict(),
    }
    # Everything is written into a hidden folder and put at cfg.out in one step at the end:
    # interrupted or failing before, cfg.out keeps its previous bundle (core.publish).
    with staged(cfg.out, MANIFEST_FILE) as folder:
        manifest = write_bundle(
            folder,
            graph,
            inputs.spec,
            frames[splits.cal],
            training,
            target_fpr,
            cfg.name or cfg.out.name,
            verdict=verdict,
            tiling=inputs.tiling,
            requested_target_fpr=cfg.target_fpr if note else None,
            note=note,
        )
        (folder / "history.json").write_text(json.dumps(history.as_dict(), indent=1))
        manifest, evaluation = evaluate_held_out(
            cfg, folder, manifest, images.select(splits.val), history.epochs
        )
    print(f"bundle written to {cfg.out}")
    if cfg.report:
        print(f"report: {cfg.out / 'report' / 'index.html'}")
    return manifest, evaluation


def describe_local(local: bool, spec: InputSpec, cfg: TrainConfig) -> str:
    if local:
        return (f"local detectors on: local anomaly maps, and a defect head trained for "
                f"{cfg.head_steps} steps on synthetic defects")  # fmt: skip
    return (f"local detectors off for {spec.height}x{spec.width} inputs "
            f"(--local on adds the local maps and the defect head)")  # fmt: skip


def training_tensors(
    frames: np.ndarray, train: np.ndarray, val: np.ndarray, inputs: Inputs, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and validation inputs: the images themselves, or random tiles of them."""
    if inputs.tiling is None:
        return torch.from_numpy(frames[train]), torch.from_numpy(frames[val])
    tile = inputs.spec.height
    return (
        torch.from_numpy(tiles.random_tiles(frames[train], tile, tiles.TRAIN_TILES, seed)),
        torch.from_numpy(tiles.random_tiles(frames[val], tile, tiles.VAL_TILES, seed + 1)),
    )


@torch.no_grad()
def fit_statistics(graph: ScoreGraph, train: torch.Tensor, val: torch.Tensor) -> ScoreGraph:
    """Latent density from the training codes; score standardisation from validation images."""
    graph.eval()
    device = next(graph.parameters()).device
    mu = torch.cat([graph.model.encode(b.to(device))[0] for b in train.split(512)])
    graph.fit_latent_density(mu)
    graph.fit_spectrum(train)
    graph.fit_local(train[:MAX_LOCAL_FIT], val)
    graph.fit_standardisation(val)
    return graph.cpu()


def evaluate_held_out(
    cfg: TrainConfig,
    folder: Path,
    manifest: Manifest,
    val_normals: Images,
    history: list[dict[str, float]],
) -> tuple[Manifest, Evaluation]:
    """Evaluate the bundle in `folder` on the validation normals and any held-out
    anomalies; record it in its manifest and write its report.

    Without anomalies the report still shows the training curves, the normal scores
    against their thresholds, reconstructions and the latent space.
    """
    anomalies = held_out_anomalies(cfg, limit=max(len(val_normals), 1000))
    evaluation = evaluate_bundle(folder, val_normals, anomalies)
    manifest = manifest.model_copy(update={"evaluation": evaluation.summary()})
    write_manifest(folder, manifest)
    primary = evaluation.metrics[manifest.primary_score]
    verdict = evaluation.verdict
    if "auroc" in primary:
        print(f"held-out evaluation: AUROC {primary['auroc']:.4f} ({manifest.primary_score}), "
              f"verdict FPR {verdict['fpr']:.3f}, TPR {verdict['tpr']:.3f}")  # fmt: skip
    else:
        print(f"held-out normals flagged: {verdict['fpr']:.3f} (no anomalies to measure against; "
              "pass --anomaly-data for AUROC)")  # fmt: skip
    if cfg.report:
        write_bundle_report(folder, evaluation, history, cfg.data)
    return manifest, evaluation
