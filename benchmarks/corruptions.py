"""Acquisition faults (issue 14, goal 3): ImageNet-C-style corruptions of normal images, 3 severities.

For each bundle (trained with defaults by benchmarks/quality.py --keep DIR, one per
Fashion-MNIST class, or by benchmarks/textures.py --keep DIR, one per texture): the
normal test images are scored clean (normal) and corrupted (anomalous: the camera, not
the part, is at fault) by each family at each severity. AUROC of the primary score, of
`spectrum` (the camera check), `local`, `defect` and `combined`, and the TPR at the
calibrated threshold, per family and severity.

    .venv/bin/python benchmarks/quality.py --keep /tmp/fm && \\
    .venv/bin/python benchmarks/corruptions.py --fashion-mnist /tmp/fm [--textures /tmp/tx]

Families (severity 1, 2, 3): gaussian noise sigma 0.04/0.08/0.16; defocus blur (Gaussian)
sigma 0.5/1/2 px; motion blur over 3/5/9 px; exposure +0.1/+0.2/+0.4; contrast x0.8/0.6/0.3;
occlusion by a black square of 15/25/40 % of the side (over a quarter of it hiding
something brighter than 0.1, else drawn again elsewhere); JPEG quality 50/20/8; shift by
1/2/4 px (edge replicated). Writes benchmarks/results/corruptions.json (--name: another
name).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table
from benchmarks.texture_data import build
from vigil.core.bundle import load_bundle
from vigil.core.score_names import COMBINED, DEFECT, HEATMAP, LOCAL, PRIMARY, SPECTRUM
from vigil.core.verdicts import Judge
from vigil.training.calibrate import score_images
from vigil.training.data import read_images

Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))


def _np(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def noise(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0, s, x.shape)


def defocus(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return _np(_pil(x).filter(ImageFilter.GaussianBlur(s)))


def motion(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    k = int(s)
    pad = np.pad(x, ((0, 0), (k // 2, k // 2)), mode="edge")
    return np.mean([pad[:, i : i + x.shape[1]] for i in range(k)], axis=0)


def exposure(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return x + s


def contrast(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return x.mean() + (x - x.mean()) * s


OCCLUDER_HIDES = 0.25  # share of an occluder's pixels it must visibly change (by 0.1)
OCCLUDER_TRIES = 20


def occlusion(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A black square; one that would hide nothing (on a black background: a fifth to a
    third of the small squares on sandals, trousers, sneakers) is drawn again elsewhere,
    as texture_data redraws defects that change nothing: those images are not corrupted."""
    h, w = x.shape
    side = max(1, round(s * min(h, w)))
    out = x.copy()
    for _ in range(OCCLUDER_TRIES):
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        hidden = x[top : top + side, left : left + side]
        if (hidden > 0.1).mean() >= OCCLUDER_HIDES:
            break
    out[top : top + side, left : left + side] = 0.0
    return out


def jpeg(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    _pil(x).save(buffer, format="JPEG", quality=int(s))
    return _np(Image.open(buffer))


def shift(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    k = int(s)
    dy, dx = (k, 0) if rng.random() < 0.5 else (0, k)
    dy, dx = dy * rng.choice([-1, 1]), dx * rng.choice([-1, 1])
    pad = np.pad(x, k, mode="edge")
    return pad[k + dy : k + dy + x.shape[0], k + dx : k + dx + x.shape[1]]


FAMILIES: dict[str, tuple[Corruption, tuple[float, float, float]]] = {
    "noise": (noise, (0.04, 0.08, 0.16)),
    "defocus": (defocus, (0.5, 1.0, 2.0)),
    "motion": (motion, (3, 5, 9)),
    "exposure": (exposure, (0.1, 0.2, 0.4)),
    "contrast": (contrast, (0.8, 0.6, 0.3)),
    "occlusion": (occlusion, (0.15, 0.25, 0.4)),
    "jpeg": (jpeg, (50, 20, 8)),
    "shift": (shift, (1, 2, 4)),
}


def corrupt(images: np.ndarray, family: str, severity: int, seed: int) -> np.ndarray:
    """images [N, H, W] float in [0, 1] -> corrupted, quantised to 8 bits like a file."""
    fn, levels = FAMILIES[family]
    rng = np.random.default_rng([seed, severity])
    out = np.stack([fn(x.astype(np.float32), levels[severity - 1], rng) for x in images])
    return np.round(np.clip(out, 0, 1) * 255).astype(np.float32) / 255


SUMMARY_SCORES = (PRIMARY, SPECTRUM, LOCAL, DEFECT, HEATMAP, COMBINED)


def evaluate(bundle: Path, normals: np.ndarray) -> dict[str, Any]:
    """normals [N, H, W] in [0, 1] (8-bit values), the bundle's input size."""
    manifest, _ = load_bundle(bundle)
    judge = Judge(manifest)
    limits = judge.thresholds()
    clean = score_images(bundle, normals[:, None])
    names = [n for n in (manifest.primary_score, *SUMMARY_SCORES) if n in manifest.scores]
    out: dict[str, Any] = {"primary": manifest.primary_score}
    for family in FAMILIES:
        for severity in (1, 2, 3):
            bad = score_images(bundle, corrupt(normals, family, severity, 0)[:, None])
            y = np.r_[np.zeros(len(normals)), np.ones(len(normals))]
            row = {
                name: float(roc_auc_score(y, np.r_[clean[name], bad[name]]))
                for name in dict.fromkeys(names)
            }
            row["tpr"] = float(judge.flags(bad).mean())
            if SPECTRUM in bad:  # the camera check at its own calibrated threshold
                row["tpr_spectrum"] = float((bad[SPECTRUM] > limits[SPECTRUM]).mean())
            out[f"{family}/{severity}"] = row
    out["fpr"] = float(judge.flags(clean).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-mnist", type=Path, default=None, help="quality.py --keep DIR")
    parser.add_argument("--textures", type=Path, default=None, help="textures.py --keep DIR")
    parser.add_argument("--n", type=int, default=1000, help="normal test images per model")
    parser.add_argument("--name", default="corruptions", help="results file name")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.fashion_mnist:
        test = read_images("fashion-mnist", "test")
        assert test.arrays is not None and test.labels is not None
        for bundle in sorted(args.fashion_mnist.glob("class-*")):
            k = int(bundle.name.split("-")[1])
            normals = test.arrays[test.labels == k][: args.n].astype(np.float32) / 255
            results[f"fashion-mnist/{k}"] = evaluate(bundle, normals)
            print(bundle, flush=True)
    if args.textures:
        for bundle in sorted(p for p in args.textures.iterdir() if (p / "manifest.json").exists()):
            s = build(bundle.name)
            normals = np.round(s.test_normal * 255).astype(np.float32) / 255
            results[f"texture/{bundle.name}"] = evaluate(bundle, normals)
            print(bundle, flush=True)
    primary = next(iter(results.values()))["primary"]
    rows = []
    for family in FAMILIES:
        row: dict[str, Any] = {"family": family}
        for severity in (1, 2, 3):
            key = f"{family}/{severity}"
            values = [r[key][primary] for r in results.values()]
            row[f"s{severity} mean"] = float(np.mean(values))
            if severity == 2:
                row["s2 min"] = float(np.min(values))
                for name in SUMMARY_SCORES:  # mean over the models that have the score
                    values = [r[key][name] for r in results.values() if name in r[key]]
                    if values:
                        row[f"s2 {name}"] = float(np.mean(values))
                row["s2 TPR@cal"] = float(np.mean([r[key]["tpr"] for r in results.values()]))
        rows.append(row)
    print(f"AUROC of {primary} (clean vs corrupted normal test images), mean over models:")
    print(table(rows, list(rows[0])))
    save(
        args.name,
        {
            "command": "benchmarks/corruptions.py " + " ".join(sys.argv[1:]),
            "primary_score": primary,
            "models": results,
            "summary": rows,
        },
    )


if __name__ == "__main__":
    main()
