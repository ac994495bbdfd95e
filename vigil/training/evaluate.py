"""Evaluation: detection metrics per score, at the calibrated threshold and at label-based ones.

`evaluate_bundle` runs the one-class protocol through the bundle's ONNX graph, with the
same preprocessing and verdict code as the service, so its numbers are the service's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vigil.core.bundle import Manifest, load_bundle
from vigil.core.verdicts import Judge
from vigil.training.calibrate import score_images
from vigil.training.data import Images, to_inputs


def score_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """labels: 1 = anomaly. AUROC, AUPRC, FPR at 95 % TPR, and the FPR/TPR of `threshold`.

    Without anomalies (normal images only) just the threshold and its realised FPR.
    """
    labels = labels.astype(bool)
    flagged = scores > threshold
    out = {"threshold": float(threshold), "fpr": _rate(flagged[~labels])}
    if labels.all() or not labels.any():
        return out
    fpr, tpr, cuts = roc_curve(labels, scores)
    youden = int(np.argmax(tpr - fpr))
    return out | {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
        "tpr": _rate(flagged[labels]),
        "youden_threshold": float(cuts[youden]),
        "f1_best_threshold": _f1_best(labels, scores),
    }


def _rate(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else float("nan")


def _f1_best(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(-scores)
    hits = np.cumsum(labels[order])
    flagged = np.arange(1, len(scores) + 1)
    f1 = 2 * hits / (flagged + labels.sum())
    return float(scores[order][int(np.argmax(f1))])


@dataclass
class Evaluation:
    manifest: Manifest
    images: np.ndarray
    labels: np.ndarray  # 1 = anomaly
    classes: np.ndarray | None
    outputs: dict[str, np.ndarray]
    thresholds: dict[str, float]
    metrics: dict[str, dict[str, float]]
    flags: np.ndarray  # the verdict per image: any verdict score above its threshold
    verdict: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "primary_score": self.manifest.primary_score,
            "n_normal": int((self.labels == 0).sum()),
            "n_anomalous": int(self.labels.sum()),
            "target_fpr": self.manifest.calibration.target_fpr,
            "verdict": self.verdict,
            "scores": self.metrics,
        }


def evaluate_arrays(
    manifest: Manifest,
    images: np.ndarray,
    labels: np.ndarray,
    outputs: dict[str, np.ndarray],
    classes: np.ndarray | None = None,
) -> Evaluation:
    judge = Judge(manifest)
    limits = judge.thresholds()
    metrics = {name: score_metrics(labels, outputs[name], limits[name]) for name in manifest.scores}
    flagged = judge.flags(outputs)
    normal = labels == 0
    verdict = {"fpr": _rate(flagged[normal]), "tpr": _rate(flagged[~normal])}
    return Evaluation(manifest, images, labels, classes, outputs, limits, metrics, flagged, verdict)


def evaluate_bundle(bundle: Path, normals: Images, anomalies: Images | None) -> Evaluation:
    """Score normal and anomalous images through the bundle's graph and measure."""
    manifest, _ = load_bundle(bundle)
    anomalies = anomalies or Images(source="none", files=())
    spec = manifest.frame_spec()  # the input, or for a tiled bundle the whole frame
    images = np.concatenate([to_inputs(normals, spec), to_inputs(anomalies, spec)])
    labels = np.r_[np.zeros(len(normals), int), np.ones(len(anomalies), int)]
    classes = None
    if normals.labels is not None and anomalies.labels is not None:
        classes = np.r_[normals.labels, anomalies.labels]
    outputs = score_images(bundle, images)
    return evaluate_arrays(manifest, images, labels, outputs, classes)
