"""Shared fixtures: small real bundles, trained once per test session in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def make_blobs(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Normal images for tests: one soft bright blob at a random place, uint8 [N, H, W(, C)]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(size * 0.3, size * 0.7, (n, 2))
    radius = rng.uniform(size * 0.12, size * 0.2, (n, 1, 1))
    dist2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (
        xx[None] - centres[:, 1, None, None]
    ) ** 2
    images = np.exp(-dist2 / (2 * radius**2))
    if channels == 3:
        tint = rng.uniform(0.6, 1.0, (n, 1, 1, 3))
        images = images[..., None] * tint
    return np.round(images * 255).astype(np.uint8)


def train_bundle(out: Path, data: str, **overrides: object) -> Path:
    from vigil.training.config import TrainConfig
    from vigil.training.pipeline import run

    settings: dict[str, object] = {
        "epochs": 2, "head_steps": 20, "progress": False, "report": False, "seed": 0
    }  # fmt: skip
    settings.update(overrides)
    run(TrainConfig(data=data, out=out, **settings))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def vae_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE trained briefly (8 epochs) on 600 Fashion-MNIST T-shirts."""
    root = tmp_path_factory.mktemp("bundles")
    return train_bundle(root / "vae", "fashion-mnist", normal_class=0, max_images=600, epochs=8)


@pytest.fixture(scope="session")
def ae_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AE on 300 synthetic blob images."""
    root = tmp_path_factory.mktemp("bundles")
    np.savez(root / "blobs.npz", images=make_blobs(300))
    return train_bundle(root / "ae", str(root / "blobs.npz"), model="ae", target_fpr=0.05)


@pytest.fixture(scope="session")
def rgb_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE on a folder of 200 RGB 32x32 PNGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("bundles")
    folder = root / "rgb"
    folder.mkdir()
    for i, image in enumerate(make_blobs(200, size=32, channels=3)):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return train_bundle(root / "rgb-vae", str(folder), latent_dim=8, target_fpr=0.05)


def smooth_noise_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A stationary 'surface' for tiling tests: 5x5 box-filtered noise, float32 [N, S, S]."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, size + 4, size + 4)).astype(np.float32)
    kernel = np.ones(5, np.float32) / 5
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 2, base)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 1, rows)


@pytest.fixture(scope="session")
def tiled_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160x160 frames: tiled by default (64x64 tiles, stride 32, 16 a frame), 2 epochs."""
    root = tmp_path_factory.mktemp("bundles")
    frames = smooth_noise_frames(130, 160)
    np.savez(root / "frames.npz", images=np.round(frames * 255).astype(np.uint8))
    return train_bundle(root / "tiled", str(root / "frames.npz"), target_fpr=0.05)
