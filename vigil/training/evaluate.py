"""Evaluation: detection metrics per score, at the calibrated threshold and at label-based ones.

`evaluate_bundle` runs the one-class protocol through the bundle's ONNX graph, with the
same preprocessing and verdict code as the service, so its numbers are the service's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vigil.core.bundle import Manifest, load_bundle
from vigil.core.verdicts import Judge
from vigil.training.calibrate import score_images
from vigil.training.data import DataError, Images, read_images, to_inputs


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
    return Evaluation(manifest, images, labels, classes, outputs, limits, metrics, verdict)


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


# ---------------------------------------------------------------- the `vigil evaluate` command


def one_class_split(
    data: str, normal_class: int | None, anomaly_data: str | None
) -> tuple[Images, Images]:
    """Test normals and anomalies: the normal class vs the rest, or --anomaly-data."""
    test = read_images(data, "test")
    if anomaly_data:
        normals = test.of_class(normal_class) if normal_class is not None else test
        return normals, read_images(anomaly_data, "test")
    if normal_class is None:
        raise DataError(
            "say which images are anomalous: --normal-class K for labelled data, "
            "or --anomaly-data PATH"
        )
    return test.of_class(normal_class), test.of_class(normal_class, keep=False)


def evaluate_one(args: argparse.Namespace) -> int:
    """`vigil evaluate --bundle DIR --data ...`: metrics table, JSON and report."""
    from vigil.training.pipeline import write_training_report

    manifest, _ = load_bundle(args.bundle)
    normal_class = args.normal_class
    if normal_class is None:
        normal_class = manifest.training.normal_class
    normals, anomalies = one_class_split(args.data, normal_class, args.anomaly_data)
    evaluation = evaluate_bundle(args.bundle, normals, anomalies)
    print(format_table(evaluation))
    out = args.out or args.bundle / "report"
    write_training_report(out, args.bundle, evaluation, read_history(args.bundle), args.data)
    return 0


def read_history(bundle: Path) -> list[dict[str, float]] | None:
    path = bundle / "history.json"
    return json.loads(path.read_text())["epochs"] if path.exists() else None


def format_table(evaluation: Evaluation) -> str:
    primary = evaluation.manifest.primary_score
    lines = [f"{'score':<16}{'AUROC':>8}{'AUPRC':>8}{'FPR@95':>8}{'FPR':>8}{'TPR':>8}"]
    for name, m in evaluation.metrics.items():
        mark = " *" if name == primary else ""
        cells = [
            m.get(key, float("nan")) for key in ("auroc", "auprc", "fpr_at_95_tpr", "fpr", "tpr")
        ]
        lines.append(f"{name + mark:<16}" + "".join(f"{c:>8.4f}" for c in cells))
    v = evaluation.verdict
    lines.append(
        f"verdict at target FPR {evaluation.manifest.calibration.target_fpr:g}: "
        f"FPR {v['fpr']:.4f}, TPR {v['tpr']:.4f}   (* primary score)"
    )
    return "\n".join(lines)


def evaluate_all_classes(args: argparse.Namespace) -> int:
    """Train one model per class with default settings and evaluate each: the field's benchmark."""
    from vigil.training.pipeline import TrainConfig, run

    labels = read_images(args.data, "train").labels
    if labels is None:
        raise DataError(f"{args.data}: --all-classes needs labelled data")
    out = args.out or Path("evaluation")
    rows = []
    for k in (
        args.classes if args.classes is not None else sorted(int(c) for c in np.unique(labels))
    ):
        started = time.time()
        extra = {} if args.epochs is None else {"epochs": args.epochs}
        cfg = TrainConfig(
            data=args.data,
            out=out / f"class-{k}",
            model=args.model,
            normal_class=k,
            seed=args.seed,
            report=False,
            **extra,
        )
        run(cfg)
        normals, anomalies = one_class_split(args.data, k, None)
        evaluation = evaluate_bundle(cfg.out, normals, anomalies)
        rows.append(class_row(k, evaluation, time.time() - started))
        print(format_table(evaluation))
    summary = summarise(rows)
    (out / "all-classes.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_rows(summary))
    return 0


def class_row(k: int, evaluation: Evaluation, seconds: float) -> dict[str, Any]:
    return {
        "class": k,
        "auroc": {name: m["auroc"] for name, m in evaluation.metrics.items()},
        "verdict_fpr": evaluation.verdict["fpr"],
        "verdict_tpr": evaluation.verdict["tpr"],
        "seconds": round(seconds, 1),
        "primary_score": evaluation.manifest.primary_score,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(rows[0]["auroc"]) if rows else []
    mean = {name: float(np.mean([r["auroc"][name] for r in rows])) for name in names}
    return {"classes": rows, "mean_auroc": mean}


def format_rows(summary: dict[str, Any]) -> str:
    rows = summary["classes"]
    names = list(summary["mean_auroc"])
    head = f"{'class':<7}" + "".join(f"{n[:11]:>12}" for n in names) + f"{'FPR':>8}{'s':>7}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['class']:<7}"
            + "".join(f"{r['auroc'][n]:>12.4f}" for n in names)
            + f"{r['verdict_fpr']:>8.4f}{r['seconds']:>7.0f}"
        )
    lines.append(f"{'mean':<7}" + "".join(f"{summary['mean_auroc'][n]:>12.4f}" for n in names))
    return "\n".join(lines)
