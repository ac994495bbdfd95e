"""Small normal sets and honest FPR (issue 14, goal 4).

Part 1, small sets: `vigil train` with defaults on 300 normal images of a Fashion-MNIST
class (`--max-images 300`, as an inspection line might have), evaluated on the class's
1,000 normal test images and the 9,000 others: the split the defaults chose, the target
FPR the bundle holds, AUROC, the TPR at the calibrated threshold and the realised FPR.

Part 2, where the realised FPR's spread comes from: for conformal calibration on n
normal images at target alpha, the FPR a threshold realises on new normals is
Beta(k, n + 1 - k) distributed, k = floor(alpha (n + 1)) (exchangeable data); measured on
m test normals it gets binomial noise on top. The script prints the expected standard
deviation and the probability that all 10 classes land within +-0.5 points of the target
with today's split (n = 1,200, m = 1,000) and larger ones, and compares with the spread
benchmarks/results/quality.json measured (and its per-class KS test of calibration vs
test scores, the exchangeability check).

    .venv/bin/python benchmarks/small_sets.py [--classes 0 1 ...] [--n 300]

Writes benchmarks/results/small_sets.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, save, table
from vigil.training.config import TrainConfig
from vigil.training.evaluate import evaluate_bundle
from vigil.training.evaluate_cli import one_class_split
from vigil.training.pipeline import run


def realised_fpr_sd(n_cal: int, alpha: float, m_test: int) -> tuple[float, float, float]:
    """(sd from calibration, sd from measuring on m_test normals, both) of the realised FPR."""
    k = math.floor(alpha * (n_cal + 1))
    if k < 1:
        return (math.nan,) * 3  # the target is not supported: no threshold
    a, b = k, n_cal + 1 - k
    mean = a / (a + b)
    var_cal = a * b / ((a + b) ** 2 * (a + b + 1))
    var_test = mean * (1 - mean) / m_test
    return math.sqrt(var_cal), math.sqrt(var_test), math.sqrt(var_cal + var_test)


def p_all_within(n_cal: int, alpha: float, m_test: int, classes: int, band: float) -> float:
    """P(every one of `classes` independent runs realises FPR within +-band of alpha), by simulation."""
    rng = np.random.default_rng(0)
    k = math.floor(alpha * (n_cal + 1))
    if k < 1:
        return math.nan
    fpr = rng.beta(k, n_cal + 1 - k, size=(20000, classes))
    measured = rng.binomial(m_test, fpr) / m_test
    return float(np.mean(np.all(np.abs(measured - alpha) <= band + 1e-12, axis=1)))


def small_set(k: int, n: int, root: Path) -> dict[str, Any]:
    cfg = TrainConfig(
        data="fashion-mnist",
        out=root / f"class-{k}",
        normal_class=k,
        max_images=n,
        report=False,
        progress=False,
    )
    started = time.perf_counter()
    manifest, _ = run(cfg)
    normals, anomalies = one_class_split("fashion-mnist", k, None)
    evaluation = evaluate_bundle(cfg.out, normals, anomalies)
    primary = evaluation.manifest.primary_score
    return {
        "class": k,
        "split": manifest.training.split_sizes,
        "target_fpr": manifest.calibration.target_fpr,
        "note": manifest.calibration.note,
        "auroc": evaluation.metrics[primary]["auroc"],
        "verdict_fpr": evaluation.verdict["fpr"],
        "verdict_tpr": evaluation.verdict["tpr"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.classes:
            rows.append(small_set(k, args.n, Path(tmp)))
            print(rows[-1], flush=True)
    print(f"\n{args.n} normal images per class, default settings:")
    flat = [
        {**{c: r[c] for c in ("class", "target_fpr", "auroc", "verdict_fpr", "verdict_tpr")},
         "calibration": r["split"]["calibration"], "train": r["split"]["train"]}
        for r in rows
    ]  # fmt: skip
    print(table(flat, list(flat[0])))
    spread = []
    for n_cal in (99, 300, 1200, 2400, 6000):
        sd_cal, sd_test, sd = realised_fpr_sd(n_cal, 0.01, 1000)
        spread.append(
            {
                "n_cal": n_cal,
                "sd calibration": sd_cal,
                "sd test (m=1000)": sd_test,
                "sd total": sd,
                "P(10 classes within 0.5 pt)": p_all_within(n_cal, 0.01, 1000, 10, 0.005),
                "same, m=inf": p_all_within(n_cal, 0.01, 10**9, 10, 0.005),
            }
        )
    print("\nrealised FPR at target 0.01: expected spread (exchangeable data)")
    print(table(spread, list(spread[0])))
    measured: dict[str, Any] = {}
    path = RESULTS / "quality.json"
    if path.exists():
        classes = json.loads(path.read_text())["classes"]
        fprs = [c["vigil_fpr"] for c in classes]
        measured = {
            "fpr_per_class": fprs,
            "sd": float(np.std(fprs, ddof=1)),
            "max_abs_dev": float(np.max(np.abs(np.array(fprs) - 0.01))),
            "ks_p": [c.get("ks_p") for c in classes],
        }
        print(f"\nmeasured by quality.py: FPR per class {fprs}, sd {measured['sd']:.4f}")
    save(
        "small_sets",
        {
            "command": "benchmarks/small_sets.py " + " ".join(sys.argv[1:]),
            "n": args.n,
            "classes": rows,
            "expected_spread": spread,
            "quality_json": measured,
        },
    )


if __name__ == "__main__":
    main()
