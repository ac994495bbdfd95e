"""Probes and introspection: GET /healthz, /readyz, /model, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from vigil.core import redact
from vigil.service.metrics import Metrics
from vigil.service.model import LoadedModel, ModelHolder
from vigil.service.responses import json_response
from vigil.service.schemas import ErrorResponse, Health, ModelDescription, Ready

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "no model loaded and warmed up (yet)"}
}


def describe(model: LoadedModel) -> dict[str, Any]:
    """GET /model: the manifest's public part plus what this process made of it."""
    low, high = model.judge.fpr_range
    batcher = model.batcher
    data = redact.document(model.manifest.public())  # no server or training paths
    data.update(
        provider=model.provider,
        providers=list(model.session.get_providers()),
        target_fpr=model.target_fpr,
        target_fpr_range=[low, high],
        thresholds=model.judge.thresholds(model.target_fpr),
        batching={
            "enabled": batcher.enabled,
            "max_batch": batcher.max_batch,
            "max_wait_ms": batcher.max_wait_s * 1000,
            "warmed_shapes": len(batcher.warmed),
            "max_queue": batcher.admission.max_queue,
            "latency_budget_ms": batcher.admission.budget_s * 1000,
        },
        loaded_at=model.loaded_at.isoformat(),
        warmup_seconds=round(model.warmup_seconds, 3),
    )
    return data


def router(holder: ModelHolder, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @api.get(
        "/readyz",
        response_model=Ready,
        responses=NOT_READY,
        summary="Readiness: a bundle is loaded and its batch shapes warmed up",
    )
    async def readyz() -> Response:
        model = holder.require_ready()
        return json_response({"status": "ready", "model": model.ref, "provider": model.provider})

    @api.get(
        "/model",
        response_model=ModelDescription,
        responses=NOT_READY,
        summary="The loaded model: manifest (public part), thresholds, target FPR, provider",
    )
    async def model() -> Response:
        return json_response(describe(holder.require()))

    @api.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api
