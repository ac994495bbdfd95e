"""Local defects on textured surfaces (issue 14, goal 1): Vigil with defaults vs IsolationForest, pyod AE.

For each texture (scikit-image's brick, grass, gravel; see benchmarks/texture_data.py):
`vigil train` with default settings on 1,000 normal 64x64 crops (an .npz through the
standard reader), then the bundle's ONNX graph scores 300 normal test crops and 60
defective crops per defect kind x size (7 kinds, 3 sizes). Reports image AUROC per score,
per kind (sizes pooled) and per kind x size, the TPR at the calibrated threshold (target
FPR 0.01) and the realised FPR, and pixel AUROC of the anomaly map and of the error map.
IsolationForest and pyod's AutoEncoder are fitted on Vigil's training split, raw pixels.

    .venv/bin/python benchmarks/textures.py [--textures brick grass gravel] [--skip-pyod] [--keep DIR]

Writes benchmarks/results/textures.json (textures_faint.json with --contrast faint).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table
from benchmarks.texture_data import AMPLITUDES, KINDS, SIZES, TEXTURES, TextureSet, build, to_uint8
from vigil.core.bundle import load_bundle
from vigil.core.verdicts import Judge
from vigil.training.calibrate import score_images
from vigil.training.config import TrainConfig
from vigil.training.data import split_indices
from vigil.training.pipeline import run


def per_kind(y: np.ndarray, scores: np.ndarray, s: TextureSet) -> dict[str, Any]:
    """AUROC of `scores` (normals first, then anomalies) per kind and per kind x size."""
    n = len(s.test_normal)
    normal = np.ones(n, bool)
    out: dict[str, Any] = {}
    for kind in KINDS:
        sel = np.r_[normal, s.kinds == kind]
        out[kind] = float(roc_auc_score(y[sel], scores[sel]))
        for size in SIZES:
            sel = np.r_[normal, (s.kinds == kind) & (s.sizes == size)]
            out[f"{kind}/{size}"] = float(roc_auc_score(y[sel], scores[sel]))
    out["mean"] = float(np.mean([out[k] for k in KINDS]))
    out["min"] = float(np.min([out[k] for k in KINDS]))
    return out


def vigil(s: TextureSet, root: Path) -> dict[str, Any]:
    data = root / f"{s.texture}-normals.npz"
    np.savez(data, images=to_uint8(s.train))
    cfg = TrainConfig(data=str(data), out=root / s.texture, report=False, progress=False)
    started = time.perf_counter()
    manifest, _ = run(cfg)
    train_seconds = time.perf_counter() - started
    manifest, _ = load_bundle(cfg.out)
    test = np.concatenate([s.test_normal, s.test_anomalous])
    x = (to_uint8(test).astype(np.float32) / np.float32(255))[:, None]  # as the reader would
    started = time.perf_counter()
    out = score_images(cfg.out, x)
    score_seconds = time.perf_counter() - started
    y = np.r_[np.zeros(len(s.test_normal)), np.ones(len(s.test_anomalous))]
    judge = Judge(manifest)
    limits = judge.thresholds()
    n = len(s.test_normal)
    result: dict[str, Any] = {
        "train_seconds": train_seconds,
        "score_ms_per_image": 1000 * score_seconds / len(x),
        "primary": manifest.primary_score,
        "auroc": {name: per_kind(y, out[name], s) for name in manifest.scores},
    }
    flagged = judge.flags(out)
    result["verdict_fpr"] = float(flagged[:n].mean())
    result["verdict_tpr"] = {kind: float(flagged[n:][s.kinds == kind].mean()) for kind in KINDS} | {
        "all": float(flagged[n:].mean())
    }
    result["tpr_at_threshold"] = {
        name: float((out[name][n:] > limits[name]).mean()) for name in manifest.scores
    }
    pixel_truth = np.concatenate([np.zeros((n, *s.masks.shape[1:]), bool), s.masks]).ravel()
    result["pixel_auroc"] = {
        name: float(roc_auc_score(pixel_truth, np.asarray(out[name])[:, 0].ravel()))
        for name in ("anomaly_map", "error_map")
        if name in out
    }
    return result


def baselines(s: TextureSet, skip_pyod: bool) -> dict[str, dict[str, Any]]:
    cfg = TrainConfig(data="", out=Path())
    splits = split_indices(
        len(s.train), cfg.seed, cfg.val_fraction, cfg.calibration_fraction(len(s.train))
    )
    train = to_uint8(s.train[splits.train]).reshape(len(splits.train), -1) / 255.0
    test = np.concatenate([s.test_normal, s.test_anomalous])
    x_test = to_uint8(test).reshape(len(test), -1) / 255.0
    y = np.r_[np.zeros(len(s.test_normal)), np.ones(len(s.test_anomalous))]
    detectors: dict[str, Any] = {"isolation_forest": IsolationForest(random_state=0)}
    if not skip_pyod:
        from pyod.models.auto_encoder import AutoEncoder

        detectors["pyod_autoencoder"] = AutoEncoder(random_state=0, verbose=0)
    out = {}
    for name, detector in detectors.items():
        started = time.perf_counter()
        detector.fit(train)
        scores = (
            -detector.score_samples(x_test)
            if name == "isolation_forest"
            else detector.decision_function(x_test)
        )
        out[name] = per_kind(y, scores, s) | {"seconds": time.perf_counter() - started}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="*", default=list(TEXTURES))
    parser.add_argument("--skip-pyod", action="store_true")
    parser.add_argument(
        "--contrast",
        choices=list(AMPLITUDES),
        default="visible",
        help="defect amplitudes (benchmarks/texture_data.py): visible (the goal's) or faint",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the bundles here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for texture in args.textures:
            s = build(texture, contrast=args.contrast)
            results[texture] = {"vigil": vigil(s, root), **baselines(s, args.skip_pyod)}
            v = results[texture]["vigil"]
            print(
                f"{texture}: primary {v['primary']} mean AUROC {v['auroc'][v['primary']]['mean']:.3f}"
                f", local {v['auroc']['local']['mean']:.3f}, pixel {v['pixel_auroc']}, "
                f"IF {results[texture]['isolation_forest']['mean']:.3f}",
                flush=True,
            )
    primary = next(iter(results.values()))["vigil"]["primary"]
    names = list(next(iter(results.values()))["vigil"]["auroc"])
    rows = []
    for texture, r in results.items():
        v = r["vigil"]
        row: dict[str, Any] = {"texture": texture}
        row |= {kind: v["auroc"][primary][kind] for kind in KINDS}
        row |= {"mean": v["auroc"][primary]["mean"], "pixel": v["pixel_auroc"].get("anomaly_map")}
        row |= {"TPR@cal": v["verdict_tpr"]["all"], "FPR": v["verdict_fpr"]}
        row |= {b: r[b]["mean"] for b in ("isolation_forest", "pyod_autoencoder") if b in r}
        rows.append(row)
    mean_row: dict[str, Any] = {"texture": "mean"}
    for key in rows[0]:
        if key != "texture" and all(isinstance(r.get(key), float) for r in rows):
            mean_row[key] = float(np.mean([r[key] for r in rows]))
    print(f"\nimage AUROC of the primary score ({primary}) per defect kind (sizes pooled):")
    print(table([*rows, mean_row], list(rows[0])))
    print("\nmean AUROC over kinds, per score:")
    score_rows = [
        {"score": n, **{t: results[t]["vigil"]["auroc"][n]["mean"] for t in results}}
        | {"mean": float(np.mean([results[t]["vigil"]["auroc"][n]["mean"] for t in results]))}
        for n in names
    ]
    print(table(score_rows, ["score", *results, "mean"]))
    print("\nprimary score AUROC per kind x size (mean over textures):")
    size_rows = [
        {"kind": kind}
        | {
            size: float(
                np.mean([results[t]["vigil"]["auroc"][primary][f"{kind}/{size}"] for t in results])
            )
            for size in SIZES
        }
        for kind in KINDS
    ]
    print(table(size_rows, ["kind", *SIZES]))
    save(
        "textures" if args.contrast == "visible" else f"textures_{args.contrast}",
        {
            "command": "benchmarks/textures.py " + " ".join(sys.argv[1:]),
            "contrast": args.contrast,
            "primary_score": primary,
            "target_fpr": 0.01,
            "textures": results,
            "summary": [*rows, mean_row],
        },
    )


if __name__ == "__main__":
    main()
