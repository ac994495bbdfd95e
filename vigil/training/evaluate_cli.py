"""`vigil evaluate`: one bundle against labelled test data, or the one-class benchmark.

With `--all-classes`, one model per class is trained with default settings and each is
evaluated on the rest of the test set: the standard one-class protocol of this field.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vigil.core.bundle import load_bundle
from vigil.training.config import TrainConfig
from vigil.training.data import DataError, Images, read_images
from vigil.training.evaluate import Evaluation, evaluate_bundle
from vigil.training.pipeline import run
from vigil.training.report import write_bundle_report


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
    manifest, _ = load_bundle(args.bundle)
    normal_class = args.normal_class
    if normal_class is None:
        normal_class = manifest.training.normal_class
    normals, anomalies = one_class_split(args.data, normal_class, args.anomaly_data)
    evaluation = evaluate_bundle(args.bundle, normals, anomalies)
    print(format_table(evaluation))
    page = write_bundle_report(
        args.bundle, evaluation, read_history(args.bundle), args.data, args.out
    )
    print(f"report: {page}")
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
            head_steps=args.head_steps,
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
