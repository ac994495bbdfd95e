"""Training speed: images/s per epoch (AE, VAE) and the wall time of `vigil train` with defaults.

    .venv/bin/python benchmarks/train_speed.py [--normal-class 0] [--epochs 3]

Writes benchmarks/results/train_speed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table
from vigil.training.config import TrainConfig
from vigil.training.data import infer_spec, read_images, split_indices, to_inputs
from vigil.training.models import AutoEncoder, ModelConfig
from vigil.training.train import FitConfig, fit


def epoch_speed(kind: str, normal_class: int, epochs: int) -> dict[str, float | str]:
    defaults = TrainConfig(data="fashion-mnist", out=Path())
    images = read_images("fashion-mnist").of_class(normal_class)
    spec = infer_spec(images, None, None)
    x = torch.from_numpy(to_inputs(images, spec))
    splits = split_indices(len(x), 0, defaults.val_fraction, defaults.calibration_fraction(len(x)))
    cfg = ModelConfig(kind=kind, latent_dim=defaults.latent_dim, base_width=defaults.base_width)  # type: ignore[arg-type]
    fit_cfg = FitConfig(
        epochs=epochs, patience=epochs, batch_size=defaults.batch_size, progress=False
    )
    history = fit(AutoEncoder(cfg), x[splits.train], x[splits.val], fit_cfg)
    rates = [e["images_per_second"] for e in history.epochs[1:]] or [
        history.epochs[0]["images_per_second"]
    ]
    return {
        "model": kind,
        "train_images": len(splits.train),
        "images_per_second": sum(rates) / len(rates),
        "seconds_per_epoch": len(splits.train) / (sum(rates) / len(rates)),
        "threads": torch.get_num_threads(),
    }


def default_run(normal_class: int) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vigil.cli", "train", "--data", "fashion-mnist",
               "--normal-class", str(normal_class), "--model", "vae", "--out", f"{tmp}/bundle"]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(
            cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1]
        )
        seconds = time.perf_counter() - started
    return {"command": " ".join(cmd[1:]).replace(tmp, "DIR"), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normal-class", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model")
    args = parser.parse_args()
    rows = [epoch_speed(kind, args.normal_class, args.epochs) for kind in ("ae", "vae")]
    default = default_run(args.normal_class)
    print(
        table(rows, ["model", "train_images", "images_per_second", "seconds_per_epoch", "threads"])
    )
    print(f"\n`vigil train` with defaults (VAE, class {args.normal_class}): {default['seconds']:.0f} s "
          "end to end (read, train, export, calibrate, evaluate, report)")  # fmt: skip
    save("train_speed", {"epochs": rows, "default_model": default})


if __name__ == "__main__":
    main()
