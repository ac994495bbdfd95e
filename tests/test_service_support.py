"""Shared helpers for the service tests (no tests here): apps driven in-process, images.

An app is driven through httpx's ASGI transport; the transport does not run the lifespan,
so `serving` enters `app.router.lifespan_context` itself and waits for the start-up load.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import vigil.service.model
from vigil.service.app import create_app
from vigil.service.model import ModelHolder
from vigil.service.settings import Settings

BASE_URL = "http://vigil.test"


def make_settings(bundle: Path, **overrides: Any) -> Settings:
    """Settings for tests: small batches so warm-up is quick; no environment leaks in."""
    values: dict[str, Any] = {
        "bundle": bundle,
        "providers": "CPUExecutionProvider",
        "max_batch": 8,
        "max_wait_ms": 2.0,
        "intra_op_threads": 1,
        "admin_token": None,
        "target_fpr": None,
        "models_dir": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def holder_of(app: FastAPI) -> ModelHolder:
    holder = app.state.holder
    assert isinstance(holder, ModelHolder)
    return holder


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app with its lifespan running and the start-up load finished, and a client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(holder_of(app).first_load.wait(), 60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=60) as client:
            yield app, client


def encode(array: np.ndarray, fmt: str = "PNG", **params: Any) -> bytes:
    """A uint8 array ([H, W], [H, W, 3|4]) or uint16 [H, W] as encoded image bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def blob(size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """One normal-looking test image (a soft blob), uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    image = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size * 0.16) ** 2))
    if channels == 3:
        image = image[..., None] * np.array([1.0, 0.8, 0.6])
    return np.round(image * 255).astype(np.uint8)


def tshirt(index: int = 0) -> np.ndarray:
    """A real Fashion-MNIST test T-shirt (class 0, normal for the `vae_bundle`), uint8 28x28."""
    from vigil.training.data import read_images

    arrays = read_images("fashion-mnist", "test").of_class(0).arrays
    assert arrays is not None
    return np.ascontiguousarray(arrays[index])


def noise(size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx `files=` for the field `files`."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], sample: str, /, **labels: str
) -> float:
    """One sample's value (0 when absent); labels must match exactly."""
    return samples.get((sample, tuple(sorted(labels.items()))), 0.0)


def copy_bundle(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def hold_loading(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every model load wait (in its worker thread) until the returned event is set."""
    release = threading.Event()
    real = vigil.service.model.load_model

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(vigil.service.model, "load_model", slow_load)
    return release
