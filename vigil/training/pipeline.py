"""`vigil train` end to end: read → split → fit → fit score statistics → bundle → evaluate → report."""

from __future__ import annotations

import json

import numpy as np
import torch

from vigil.core.bundle import Manifest, write_manifest
from vigil.core.calibration import check_fpr
from vigil.training.bundle import write_bundle
from vigil.training.config import TrainConfig
from vigil.training.data import DataError, Images, infer_spec, read_images, split_indices, to_inputs
from vigil.training.evaluate import Evaluation, evaluate_bundle
from vigil.training.models import AutoEncoder
from vigil.training.report import write_bundle_report
from vigil.training.scores import ScoreGraph
from vigil.training.train import fit, seed_everything


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
    spec = infer_spec(images, cfg.image_size, cfg.color_mode)
    splits = split_indices(len(images), cfg.seed, cfg.val_fraction, cfg.cal_fraction)
    check_fpr(cfg.target_fpr, len(splits.cal))  # fail before training, not after
    print(
        f"{len(images)} normal images from {images.source}, {spec.channels}x{spec.height}x"
        f"{spec.width} {spec.color_mode}; split {splits.sizes()}"
    )
    x = torch.from_numpy(to_inputs(images, spec))
    model = AutoEncoder(cfg.model_config(spec))
    history = fit(model, x[splits.train], x[splits.val], cfg.fit_config(len(splits.train)))
    graph = fit_statistics(ScoreGraph(model), x[splits.train], x[splits.val])
    training = {
        "data_source": images.source,
        "normal_class": cfg.normal_class,
        "split_sizes": splits.sizes(),
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch,
        "seed": cfg.seed,
        "seconds": round(history.seconds, 2),
        "device": history.device,
        "config": cfg.as_dict(),
    }
    name = cfg.name or cfg.out.name
    manifest = write_bundle(
        cfg.out, graph, spec, x[splits.cal].numpy(), training, cfg.target_fpr, name
    )
    (cfg.out / "history.json").write_text(json.dumps(history.as_dict(), indent=1))
    print(f"bundle written to {cfg.out}")
    evaluation = evaluate_held_out(cfg, manifest, images.select(splits.val), history.epochs)
    return manifest, evaluation


@torch.no_grad()
def fit_statistics(graph: ScoreGraph, train: torch.Tensor, val: torch.Tensor) -> ScoreGraph:
    """Latent density from the training codes; score standardisation from validation images."""
    graph.eval()
    device = next(graph.parameters()).device
    mu = torch.cat([graph.model.encode(b.to(device))[0] for b in train.split(512)])
    graph.fit_latent_density(mu)
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
        print(f"report: {write_bundle_report(cfg.out, evaluation, history, cfg.data)}")
    return evaluation
