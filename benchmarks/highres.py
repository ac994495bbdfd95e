"""High-resolution frames with a ~10-pixel defect (issue 14, goal 2), `vigil train` with defaults.

Frames are 1024x1024 photos of a surface: a texture photo (scikit-image's, 512x512)
enlarged 2x (Lanczos), one frame per shot with its own sensor noise (sigma 0.01) and
exposure (+-2 %). Training frames are the photo as is or mirrored left-right; test
frames mirrored top-bottom (and left-right), so no test frame equals a training frame.
Defective test frames carry one defect of extent 10 px (one of the seven kinds of
benchmarks/texture_data.py) at a random place. By default `vigil train` keeps such
frames at full resolution and learns 64x64 tiles (stride 32: 961 tiles a frame); the image
score is the max over tiles, calibrated on whole held-out frames.

    .venv/bin/python benchmarks/highres.py [--textures brick gravel] [--frames 120]

Reports per texture: frame AUROC of every score, TPR at the calibrated threshold, the
realised FPR on normal test frames, pixel AUROC of the stitched anomaly map, and the
cost: ms per frame and per megapixel in ONNX Runtime (2 intra-op threads, one session
call per frame). Writes benchmarks/results/highres.json (highres_strideN.json with
--tile-stride N).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table
from benchmarks.texture_data import (
    AMPLITUDES,
    KINDS,
    TEXTURES,
    Strength,
    add_defect,
    photo,
    to_uint8,
)
from vigil.core.bundle import load_bundle
from vigil.core.runtime import create_session, run
from vigil.core.tiling import score_tiled
from vigil.core.verdicts import Judge
from vigil.training.calibrate import score_images
from vigil.training.config import TrainConfig
from vigil.training.pipeline import run as train

FRAME = 1024
DEFECT_PX = 10


def enlarged(texture: str) -> np.ndarray:
    image = Image.fromarray(photo(texture))
    return np.asarray(image.resize((FRAME, FRAME), Image.Resampling.LANCZOS), dtype=np.float32)


def frames(base: np.ndarray, n: int, test: bool, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, FRAME, FRAME), dtype=np.float32)
    for i in range(n):
        f = base[::-1] if test else base
        if rng.random() < 0.5:
            f = f[:, ::-1]
        f = f * (1 + rng.uniform(-0.02, 0.02)) + rng.normal(0, 0.01, f.shape)
        out[i] = np.clip(f, 0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="*", default=list(TEXTURES))
    parser.add_argument("--frames", type=int, default=120, help="normal training frames")
    parser.add_argument("--test-normal", type=int, default=40)
    parser.add_argument("--per-kind", type=int, default=8, help="defective test frames per kind")
    parser.add_argument("--contrast", choices=list(AMPLITUDES), default="visible")
    parser.add_argument(
        "--tile-stride", type=int, default=None, help="vigil train --tile-stride (default: its own)"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for texture in args.textures:
            rng = np.random.default_rng([7, TEXTURES.index(texture)])
            base = enlarged(texture)
            data = Path(tmp) / f"{texture}.npz"
            np.savez(data, images=to_uint8(frames(base, args.frames, False, rng)))
            cfg = TrainConfig(
                data=str(data),
                out=Path(tmp) / texture,
                report=False,
                progress=False,
                tile_stride=args.tile_stride,
            )
            started = time.perf_counter()
            train(cfg)
            train_seconds = time.perf_counter() - started
            manifest, model_path = load_bundle(cfg.out)
            strength = Strength.of(args.contrast, base)
            normal = frames(base, args.test_normal, True, rng)
            bad, masks, kinds = [], [], []
            for kind in KINDS:
                for f in frames(base, args.per_kind, True, rng):
                    out, mask = add_defect(f, kind, DEFECT_PX, rng, strength)
                    bad.append(out)
                    masks.append(mask)
                    kinds.append(kind)
            test = to_uint8(np.concatenate([normal, np.stack(bad)])).astype(np.float32) / 255
            scored = score_images(cfg.out, test[:, None])
            y = np.r_[np.zeros(len(normal)), np.ones(len(bad))]
            judge = Judge(manifest)
            flagged = judge.flags(scored)
            kinds_a = np.array(kinds)
            n = len(normal)
            per_kind = {
                name: {
                    kind: float(
                        roc_auc_score(
                            y[np.r_[np.ones(n, bool), kinds_a == kind]],
                            scored[name][np.r_[np.ones(n, bool), kinds_a == kind]],
                        )
                    )
                    for kind in KINDS
                }
                for name in manifest.scores
            }
            limits = judge.thresholds()
            at_threshold = {
                name: {
                    "fpr": float((scored[name][:n] > limits[name]).mean()),
                    "tpr": float((scored[name][n:] > limits[name]).mean()),
                }
                for name in manifest.scores
            }
            truth = np.concatenate([np.zeros((n, FRAME, FRAME), bool), np.stack(masks)])
            pixel = float(roc_auc_score(truth.ravel(), scored["anomaly_map"][:, 0].ravel()))
            # cost: one frame, all its tiles in one session call, 2 intra-op threads
            session = create_session(model_path, ["CPUExecutionProvider"], intra_op_threads=2)
            tile = (manifest.input.height, manifest.input.width)
            assert manifest.tiling is not None
            stride = (manifest.tiling.stride_height, manifest.tiling.stride_width)
            names = list(manifest.scores)
            times = []
            for i in range(5):
                started = time.perf_counter()
                score_tiled(
                    lambda t, s=session, n=names: run(s, t, n),
                    [test[i : i + 1]],
                    tile,
                    stride,
                    names,
                )
                times.append(time.perf_counter() - started)
            ms = 1000 * float(np.median(times))
            results[texture] = {
                "train_seconds": train_seconds,
                "tiles_per_frame": int(len(range(0, FRAME - tile[0] + 1, stride[0])) ** 2),
                "target_fpr": manifest.calibration.target_fpr,
                "calibration_note": manifest.calibration.note,
                "calibration_n": manifest.calibration.n,
                "auroc": {name: float(roc_auc_score(y, scored[name])) for name in manifest.scores},
                "auroc_per_kind": per_kind,
                "at_threshold": at_threshold,
                "primary": manifest.primary_score,
                "verdict_fpr": float(flagged[:n].mean()),
                "verdict_tpr": float(flagged[n:].mean()),
                "pixel_auroc": pixel,
                "ms_per_frame": ms,
                "ms_per_megapixel": ms / (FRAME * FRAME / 1e6),
            }
            print(texture, results[texture], flush=True)
    rows = [
        {
            "texture": t,
            "AUROC": r["auroc"][manifest.primary_score],
            **{k: r["auroc_per_kind"][r["primary"]][k] for k in KINDS},
            "pixel": r["pixel_auroc"],
            "target": r["target_fpr"],
            "FPR": r["verdict_fpr"],
            "TPR": r["verdict_tpr"],
            "ms/MP": r["ms_per_megapixel"],
            "train s": r["train_seconds"],
        }
        for t, r in results.items()
    ]
    print(table(rows, list(rows[0])))
    save(
        "highres" if args.tile_stride is None else f"highres_stride{args.tile_stride}",
        {
            "command": "benchmarks/highres.py " + " ".join(sys.argv[1:]),
            "cpu_threads": 2,
            "cores_visible": os.cpu_count(),
            "frame": FRAME,
            "defect_px": DEFECT_PX,
            "contrast": args.contrast,
            "textures": results,
        },
    )


if __name__ == "__main__":
    main()
