"""The API on good input: probes, /model, /score in its forms, heatmaps, target_fpr, parity."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from test_service_support import (
    blob,
    encode,
    files,
    hold_loading,
    holder_of,
    make_settings,
    noise,
    serving,
    tshirt,
)

from vigil.core.bundle import read_manifest
from vigil.service.app import create_app
from vigil.service.schemas import KNOWN_SCORES, ModelDescription, ScoreResponse
from vigil.service.settings import Settings

pytestmark = pytest.mark.anyio
Served = tuple[FastAPI, httpx.AsyncClient]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def vae(vae_bundle: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_settings(vae_bundle)) as (_, client):
        yield client


@pytest.fixture(scope="module")
async def rgb(rgb_bundle: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_settings(rgb_bundle, batching=False)) as (_, client):
        yield client


async def score_one(client: httpx.AsyncClient, data: bytes, name: str = "x.png") -> dict:
    response = await client.post("/score", files=files((name, data)))
    assert response.status_code == 200, response.text
    body = response.json()
    ScoreResponse.model_validate(body)
    (result,) = body["results"]
    return result


async def test_probes(vae: httpx.AsyncClient, vae_bundle: Path) -> None:
    assert (await vae.get("/healthz")).json() == {"status": "ok"}
    ready = await vae.get("/readyz")
    assert ready.status_code == 200
    manifest = read_manifest(vae_bundle)
    assert ready.json()["model"] == {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.onnx.sha256,
    }


async def test_process_tuning_while_serving(vae_bundle: Path) -> None:
    """The switch interval is set while serving (and restored); start-up objects are frozen
    out of the cyclic GC once the model is loaded."""
    before = sys.getswitchinterval()
    gc.unfreeze()
    async with serving(make_settings(vae_bundle, switch_interval_ms=0.25)):
        assert sys.getswitchinterval() == pytest.approx(0.00025)
        assert gc.get_freeze_count() > 1000
    assert sys.getswitchinterval() == before


async def test_not_ready_until_loaded_and_warmed(
    vae_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = hold_loading(monkeypatch)
    app = create_app(make_settings(vae_bundle, max_batch=2))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/healthz")).status_code == 200
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["error"] == {
                "code": "not_ready",
                "message": "the model is loading",
            }
            assert "vigil_ready 0.0" in (await client.get("/metrics")).text
            release.set()
            await asyncio.wait_for(holder_of(app).first_load.wait(), 30)
            assert (await client.get("/readyz")).status_code == 200
            assert "vigil_ready 1.0" in (await client.get("/metrics")).text


async def test_model_describes_the_bundle(vae: httpx.AsyncClient, vae_bundle: Path) -> None:
    response = await vae.get("/model")
    assert response.status_code == 200
    body = response.json()
    ModelDescription.model_validate(body)
    manifest = read_manifest(vae_bundle)
    assert body["model"]["kind"] == "vae"
    assert body["input"] == manifest.input.model_dump(mode="json")
    assert body["scores"] == manifest.scores
    assert body["provider"] == "CPUExecutionProvider"
    assert body["target_fpr"] == manifest.calibration.target_fpr
    assert set(body["thresholds"]) == set(manifest.scores)
    assert "scores" not in body["calibration"]  # the bulky distribution stays private
    assert body["training"]["epochs"] == manifest.training.epochs
    assert body["batching"]["max_batch"] == 8
    assert body["batching"]["warmed_shapes"] == 2  # on the CPU: the largest and the smallest
    defaults = Settings.model_fields
    assert body["batching"]["max_queue"] == defaults["max_queue"].default
    assert body["batching"]["latency_budget_ms"] == defaults["latency_budget_ms"].default
    low, high = body["target_fpr_range"]
    assert 0 < low < manifest.calibration.target_fpr < high


async def test_score_several_files_in_order(vae: httpx.AsyncClient, vae_bundle: Path) -> None:
    images = [
        ("a.png", encode(tshirt())),
        ("b.png", encode(noise())),
        ("c.png", encode(blob(seed=2))),
    ]
    response = await vae.post("/score", files=files(*images))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = ScoreResponse.model_validate(response.json())
    manifest = read_manifest(vae_bundle)
    assert body.model.name == manifest.name and body.model.sha256 == manifest.onnx.sha256
    assert [r.filename for r in body.results] == ["a.png", "b.png", "c.png"]
    for result in body.results:
        assert set(result.scores) == set(KNOWN_SCORES) | set(manifest.scores)
        assert result.score == result.scores[manifest.primary_score]
        assert all(np.isfinite(v) for v in result.scores.values() if v is not None)
        assert all(0 < p <= 1 for p in result.p_values.values() if p is not None)
        flagged = [
            s
            for s in manifest.calibration.verdict_scores
            if result.scores[s] > result.thresholds[s]
        ]  # type: ignore[operator]
        assert result.flagged_by == flagged and result.is_anomaly == bool(flagged)
        assert result.heatmap is None
    # the same image twice gives the same scores; noise scores higher than a T-shirt
    again = await score_one(vae, images[0][1])
    assert again["scores"] == body.results[0].scores
    assert body.results[1].score > body.results[0].score


def _formats() -> dict[str, bytes]:
    gray, rgb = blob(), blob(channels=3)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    deep = (blob().astype(np.uint16) * 257).astype(np.uint16)
    return {
        "gray.png": encode(gray),
        "rgb.png": encode(rgb),
        "rgba.png": encode(rgba),
        "deep16.png": encode(deep),
        "photo.jpg": encode(rgb, "JPEG", quality=90),
        "gray.jpg": encode(gray, "JPEG"),
        "large.png": encode(blob(size=300)),
        "big-noise.png": encode(noise(size=600)),  # over 256 KiB: decoded in a worker thread
        "wide.png": encode(np.ascontiguousarray(np.tile(gray, (1, 3)))),
        "tiny.png": encode(blob(size=5)),
        "pic.bmp": encode(rgb, "BMP"),
        "pic.gif": encode(gray, "GIF"),
        "pic.tiff": encode(rgb, "TIFF"),
        "pic.webp": encode(rgb, "WEBP", lossless=True),
        "palette.png": encode_palette(rgb),
    }


def encode_palette(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(_formats()))
async def test_formats_modes_and_sizes_into_grayscale(vae: httpx.AsyncClient, name: str) -> None:
    result = await score_one(vae, _formats()[name], name)
    assert result["filename"] == name and np.isfinite(result["score"])


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "deep16.png", "gray.jpg", "large.png"])
async def test_formats_into_rgb_model(rgb: httpx.AsyncClient, name: str) -> None:
    result = await score_one(rgb, _formats()[name], name)
    assert np.isfinite(result["score"])


async def test_rgb_into_grayscale_equals_converted(vae: httpx.AsyncClient) -> None:
    colour = blob(channels=3)
    converted = np.asarray(Image.fromarray(colour).convert("L"))
    assert (await score_one(vae, encode(colour)))["scores"] == (
        await score_one(vae, encode(converted))
    )["scores"]


@pytest.mark.parametrize(("orientation", "turns"), [(3, 2), (6, 1), (8, 3)])
async def test_exif_orientation_is_applied(
    vae: httpx.AsyncClient, orientation: int, turns: int
) -> None:
    """A photo stored sideways with an EXIF orientation scores like the upright image."""
    upright = blob()
    upright[:8] = 255  # not symmetric under rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(upright, turns)).save(buffer, format="PNG", exif=exif)
    stored = await score_one(vae, buffer.getvalue())
    assert stored["scores"] == (await score_one(vae, encode(upright)))["scores"]
    assert stored["scores"] != (await score_one(vae, encode(np.rot90(upright, turns))))["scores"]


async def test_raw_body_upload(vae: httpx.AsyncClient) -> None:
    data = encode(blob(seed=3))
    for content_type in ("image/png", "image/jpeg", "application/octet-stream"):
        response = await vae.post("/score", content=data, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["filename"] is None
        assert result["scores"] == (await score_one(vae, data))["scores"]


async def test_ae_has_null_kl(ae_bundle: Path) -> None:
    async with serving(make_settings(ae_bundle, max_batch=2)) as (_, client):
        result = await score_one(client, encode(blob()))
        assert read_manifest(ae_bundle).model.kind == "ae"
        assert result["scores"]["kl"] is None
        assert result["p_values"]["kl"] is None and result["thresholds"]["kl"] is None
        assert result["scores"]["reconstruction"] is not None


async def test_target_fpr_rederives_thresholds(vae: httpx.AsyncClient, vae_bundle: Path) -> None:
    data = encode(noise(seed=4))
    default = (await vae.post("/score", files=files(("n.png", data)))).json()
    assert default["target_fpr"] == read_manifest(vae_bundle).calibration.target_fpr
    loose = (
        await vae.post("/score", params={"target_fpr": 0.4}, files=files(("n.png", data)))
    ).json()
    assert loose["target_fpr"] == 0.4
    before, after = default["results"][0], loose["results"][0]
    assert before["scores"] == after["scores"] and before["p_values"] == after["p_values"]
    # a score the graph lacks (the local ones on a 28x28 model) has no threshold at any target
    present = [k for k, v in before["scores"].items() if v is not None]
    assert {k for k, v in after["thresholds"].items() if v is not None} == set(present)
    assert all(after["thresholds"][k] <= before["thresholds"][k] for k in present)
    assert any(after["thresholds"][k] < before["thresholds"][k] for k in present)


async def test_target_fpr_default_from_settings(vae_bundle: Path) -> None:
    async with serving(make_settings(vae_bundle, target_fpr=0.2, max_batch=1)) as (_, client):
        assert (await client.get("/model")).json()["target_fpr"] == 0.2
        response = await client.post("/score", files=files(("a.png", encode(blob()))))
        assert response.json()["target_fpr"] == 0.2


async def test_heatmap(vae: httpx.AsyncClient, vae_bundle: Path) -> None:
    spec = read_manifest(vae_bundle).input
    response = await vae.post(
        "/score",
        params={"heatmap": "true"},
        files=files(("a.png", encode(noise())), ("b.png", encode(blob()))),
    )
    assert response.status_code == 200
    for result in response.json()["results"]:
        image = Image.open(io.BytesIO(base64.b64decode(result["heatmap"])))
        assert image.format == "PNG" and image.mode == "L"
        assert image.size == (spec.width, spec.height)
        assert np.asarray(image).max() == 255 and result["heatmap_max"] > 0


async def test_parity_with_training_path(vae: httpx.AsyncClient, vae_bundle: Path) -> None:
    """An FMNIST image scored through /score equals training's scoring of the same uint8 image."""
    from vigil.training.calibrate import score_images
    from vigil.training.data import read_images, to_inputs

    manifest = read_manifest(vae_bundle)
    images = read_images("fashion-mnist", "test").select(np.arange(0, 60, 6))
    assert images.arrays is not None
    expected = score_images(vae_bundle, to_inputs(images, manifest.input))
    uploads = [(f"{i}.png", encode(array)) for i, array in enumerate(images.arrays)]
    response = await vae.post("/score", files=files(*uploads))
    assert response.status_code == 200
    for i, result in enumerate(response.json()["results"]):
        for name in manifest.scores:
            assert result["scores"][name] == float(expected[name][i]), name  # bit for bit


async def test_openapi_documents_the_api(vae: httpx.AsyncClient) -> None:
    schema = (await vae.get("/openapi.json")).json()
    score = schema["paths"]["/score"]["post"]
    assert "multipart/form-data" in score["requestBody"]["content"]
    assert "fails the whole request" in score["description"]
    assert score["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ScoreResponse"
    )
    assert score["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    assert {p["name"] for p in score["parameters"]} == {"target_fpr", "heatmap"}
    for path in ("/healthz", "/readyz", "/model", "/metrics", "/admin/reload"):
        assert path in schema["paths"]
