"""Prometheus metrics: the exported names, bounded labels, and values that move with traffic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from test_service_support import (
    blob,
    copy_bundle,
    encode,
    files,
    make_settings,
    metric,
    metric_samples,
    noise,
    serving,
)

from vigil.core.bundle import read_manifest
from vigil.core.verdicts import Judge
from vigil.service.metrics import QUANTILES, Metrics, score_buckets

pytestmark = pytest.mark.anyio

EXPORTED = {
    "vigil_requests_total",
    "vigil_request_duration_seconds",
    "vigil_images_scored_total",
    "vigil_anomalies_total",
    "vigil_score",
    "vigil_batch_size",
    "vigil_queue_wait_seconds",
    "vigil_inference_seconds",
    "vigil_overloaded_total",
    "vigil_model_info",
    "vigil_reloads_total",
    "vigil_ready",
    "vigil_target_fpr",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def served(
    vae_bundle: Path, tmp_path_factory: pytest.TempPathFactory, rgb_bundle: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    models = tmp_path_factory.mktemp("metric-models")
    copy_bundle(vae_bundle, models / "a")
    copy_bundle(rgb_bundle, models / "b")
    settings = make_settings(models / "a", admin_token="t", max_batch=4)
    async with serving(settings) as pair:
        yield pair


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return metric_samples(response.text)


async def test_exported_names_and_no_created_series(
    served: tuple[FastAPI, httpx.AsyncClient], vae_bundle: Path
) -> None:
    _, client = served
    text = (await client.get("/metrics")).text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {f.removesuffix("_total") for f in EXPORTED} <= {
        f.removesuffix("_total") for f in families
    }
    assert "_created" not in text
    samples = metric_samples(text)
    manifest = read_manifest(vae_bundle)
    assert metric(samples, "vigil_ready") == 1
    assert metric(samples, "vigil_target_fpr") == manifest.calibration.target_fpr
    info = dict(name="vae", version="1", kind="vae", provider="CPUExecutionProvider")
    assert metric(samples, "vigil_model_info", **info) == 1
    assert metric(samples, "vigil_reloads_total", outcome="success") == 0
    assert ("vigil_reloads_total", (("outcome", "failure"),)) in samples  # exported at 0
    for reason in ("queue_full", "latency_budget"):
        assert samples[("vigil_overloaded_total", (("reason", reason),))] == 0  # exported at 0
    for score in manifest.calibration.verdict_scores:
        assert ("vigil_anomalies_total", (("score", score),)) in samples


async def test_request_and_scoring_metrics_move(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = served
    before = await scrape(client)
    flagged = 0
    for params in ({}, {"target_fpr": 0.5}):
        response = await client.post(
            "/score",
            params=params,
            files=files(
                ("a.png", encode(blob())),
                ("b.png", encode(noise())),
                ("c.png", encode(noise(seed=1))),
            ),
        )
        assert response.status_code == 200
        flagged += sum(len(r["flagged_by"]) for r in response.json()["results"])
    assert flagged > 0
    assert (await client.post("/score", files=files(("bad", b"junk")))).status_code == 415
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("vigil_images_scored_total") == 6
    assert delta("vigil_anomalies_total", score="overall") == flagged
    assert delta("vigil_requests_total", route="/score", method="POST", status="200") == 2
    assert delta("vigil_requests_total", route="/score", method="POST", status="415") == 1
    assert delta("vigil_request_duration_seconds_count", route="/score", method="POST") == 3
    assert delta("vigil_score_count", score="combined") == 6
    assert delta("vigil_score_count", score="kl") == 6
    assert delta("vigil_batch_size_sum") == 6
    assert delta("vigil_queue_wait_seconds_count") == 6
    assert delta("vigil_inference_seconds_count") >= 2
    assert delta("vigil_requests_total", route="/metrics", method="GET", status="200") == 1


async def test_labels_stay_bounded(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = served
    for i in range(30):
        assert (await client.get(f"/random/{i}")).status_code == 404
    assert (await client.request("BREW", "/score")).status_code == 405
    samples = await scrape(client)
    routes = {
        dict(labels).get("route") for (name, labels) in samples if name == "vigil_requests_total"
    }
    assert "unmatched" in routes and not any(r and r.startswith("/random") for r in routes)
    assert (
        metric(samples, "vigil_requests_total", route="unmatched", method="GET", status="404") >= 30
    )
    assert (
        metric(samples, "vigil_requests_total", route="/score", method="OTHER", status="405") == 1
    )


async def test_score_buckets_come_from_calibration(
    served: tuple[FastAPI, httpx.AsyncClient], vae_bundle: Path
) -> None:
    _, client = served
    samples = await scrape(client)
    manifest = read_manifest(vae_bundle)
    thresholds = Judge(manifest).thresholds()
    for score, values in manifest.calibration.scores.items():
        bounds = {
            float(dict(labels)["le"])
            for (name, labels) in samples
            if name == "vigil_score_bucket" and dict(labels)["score"] == score
        }
        expected = score_buckets(values, thresholds[score])
        assert bounds == {*expected, float("inf")}
        # from the calibration's 1 % quantile (4 significant digits) to beyond its maximum
        assert min(expected) <= float(f"{np.quantile(values, QUANTILES[0]):.4g}")
        assert max(expected) > max(values)
    # the threshold is a bucket bound, so the bucket counts show the share above it
    assert float(f"{thresholds['combined']:.4g}") in score_buckets(
        manifest.calibration.scores["combined"], thresholds["combined"]
    )


async def test_reload_swaps_model_info(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = served
    response = await client.post(
        "/admin/reload", json={"bundle": "b"}, headers={"Authorization": "Bearer t"}
    )
    assert response.status_code == 200, response.text
    samples = await scrape(client)
    infos = [dict(labels) for (name, labels) in samples if name == "vigil_model_info"]
    assert infos == [dict(name="rgb-vae", version="1", kind="vae", provider="CPUExecutionProvider")]
    assert metric(samples, "vigil_reloads_total", outcome="success") == 1
    assert ("vigil_score_count", (("score", "combined"),)) in samples


def test_score_buckets_shape() -> None:
    bounds = score_buckets([-2.0, -1.0, 0.0, 1.0, 2.0], threshold=1.5)
    assert bounds == sorted(set(bounds)) and 1.5 in bounds and bounds[-1] > 2.0
    assert score_buckets([3.0] * 10) == sorted(set(score_buckets([3.0] * 10)))  # no spread
    assert score_buckets([]) == [0.0, 1.0]


def test_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.images_scored.inc(3)
    assert second.registry.get_sample_value("vigil_images_scored_total") == 0
    assert first.registry.get_sample_value("vigil_images_scored_total") == 3
