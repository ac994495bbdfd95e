"""One-class Fashion-MNIST: Vigil's default model vs pyod AutoEncoder, pyod VAE, IsolationForest.

For each class k: train on the normal images of class k (the same training split for every
detector), test on all 10,000 test images (class k normal, the rest anomalous). Reports
AUROC per class and the mean, Vigil's realised FPR at its calibrated threshold on the
normal test images, and the time per class.

    .venv/bin/python benchmarks/quality.py [--classes 0 1 ...] [--skip-pyod] [--keep DIR]

Needs the bench extra (pip install -e ".[bench]"). Writes benchmarks/results/quality.json.
`--image-size 64 --max-images 3000` trains Vigil on the images upscaled to 64x64, where its
local detectors are on: whole wrong objects for the primary score's evidence (README, "The
primary score"); it writes quality_64.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ks_2samp
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table
from vigil.core.score_names import PRIMARY as PRIMARY_SCORE
from vigil.training.config import TrainConfig
from vigil.training.data import read_images, split_indices
from vigil.training.evaluate import evaluate_bundle
from vigil.training.evaluate_cli import one_class_split
from vigil.training.pipeline import normal_images, run


def vigil(k: int, root: Path, size: int | None, max_images: int | None) -> dict[str, Any]:
    cfg = TrainConfig(
        data="fashion-mnist",
        out=root / f"class-{k}",
        normal_class=k,
        image_size=(size, size) if size else None,
        max_images=max_images,
        report=False,
        progress=False,
    )
    started = time.perf_counter()
    run(cfg)
    normals, anomalies = one_class_split("fashion-mnist", k, None)
    evaluation = evaluate_bundle(cfg.out, normals, anomalies)
    manifest = evaluation.manifest
    primary = manifest.primary_score
    normal = evaluation.labels == 0
    # exchangeability check: calibration scores (train split) vs the normal test images
    ks = ks_2samp(manifest.calibration.scores[primary], evaluation.outputs[primary][normal])
    return {
        "seconds": time.perf_counter() - started,
        "auroc": {name: m["auroc"] for name, m in evaluation.metrics.items()},
        "tpr": {name: m["tpr"] for name, m in evaluation.metrics.items()},
        "primary": primary,
        "verdict_fpr": evaluation.verdict["fpr"],
        "verdict_tpr": evaluation.verdict["tpr"],
        "target_fpr": manifest.calibration.target_fpr,
        "calibration_n": manifest.calibration.n,
        "ks_cal_vs_test_pvalue": float(ks.pvalue),
    }


def baselines(k: int, skip_pyod: bool, max_images: int | None) -> dict[str, dict[str, float]]:
    """Fit each baseline on Vigil's training split of class k (28x28), score the test set."""
    cfg = TrainConfig(data="fashion-mnist", out=Path(), normal_class=k, max_images=max_images)
    images = normal_images(cfg)
    splits = split_indices(
        len(images), cfg.seed, cfg.val_fraction, cfg.calibration_fraction(len(images))
    )
    assert images.arrays is not None
    train = images.arrays[splits.train].reshape(len(splits.train), -1) / 255.0
    test = read_images("fashion-mnist", "test")
    assert test.arrays is not None and test.labels is not None
    x_test = test.arrays.reshape(len(test), -1) / 255.0
    y_test = test.labels != k
    detectors: dict[str, Any] = {"isolation_forest": IsolationForest(random_state=0)}
    if not skip_pyod:
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.vae import VAE

        detectors["pyod_autoencoder"] = AutoEncoder(random_state=0, verbose=0)
        detectors["pyod_vae"] = VAE(random_state=0, verbose=0)
    out = {}
    for name, detector in detectors.items():
        started = time.perf_counter()
        detector.fit(train)
        scores = (
            -detector.score_samples(x_test)
            if name == "isolation_forest"
            else detector.decision_function(x_test)
        )
        out[name] = {
            "auroc": float(roc_auc_score(y_test, scores)),
            "seconds": time.perf_counter() - started,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--skip-pyod", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep the bundles here")
    parser.add_argument("--image-size", type=int, default=None, help="Vigil's input side")
    parser.add_argument("--max-images", type=int, default=None, help="normal images a class")
    args = parser.parse_args()
    name = "quality" if args.image_size is None else f"quality_{args.image_size}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.classes:
            v = vigil(k, args.keep or Path(tmp), args.image_size, args.max_images)
            b = baselines(k, args.skip_pyod, args.max_images)
            row = {"class": k, "vigil_primary": v["auroc"][v["primary"]]}
            row |= {
                f"vigil_{name}": value for name, value in v["auroc"].items() if name != v["primary"]
            }
            row |= {name: r["auroc"] for name, r in b.items()}
            row |= {"vigil_fpr": v["verdict_fpr"], "vigil_tpr": v["verdict_tpr"]}
            row |= {"ks_p": v["ks_cal_vs_test_pvalue"], "vigil_seconds": v["seconds"]}
            row |= {f"tpr_{name}": value for name, value in v["tpr"].items()}
            row |= {f"{name}_seconds": r["seconds"] for name, r in b.items()}
            rows.append(row)
            print(row, flush=True)
    columns = [
        c
        for c in rows[0]
        if (not c.endswith("_seconds") or c == "vigil_seconds") and not c.startswith("tpr_")
    ]
    mean = {
        "class": "mean",
        **{c: float(np.mean([r[c] for r in rows])) for c in rows[0] if c != "class"},
    }
    print(table([*rows, mean], columns))
    save(
        name,
        {
            "command": "benchmarks/quality.py " + " ".join(sys.argv[1:]),
            "primary_score": PRIMARY_SCORE,
            "target_fpr": 0.01,
            "classes": rows,
            "mean": mean,
        },
    )


if __name__ == "__main__":
    main()
