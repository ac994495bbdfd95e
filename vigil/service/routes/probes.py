"""Probes and introspection: GET /healthz, /readyz, /model, /metrics."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from vigil.service.metrics import Metrics
from vigil.service.model import ModelHolder
from vigil.service.schemas import ErrorResponse, Health, ModelDescription, Ready

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "no model loaded and warmed up (yet)"}
}


def _json(data: object, status: int = 200) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json")


def router(holder: ModelHolder, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @api.get(
        "/readyz",
        response_model=Ready,
        responses=NOT_READY,
        summary="Readiness: a bundle is loaded and every batch shape warmed up",
    )
    async def readyz() -> Response:
        model = holder.require()
        return _json(
            {
                "status": "ready",
                "model": model.ref,
                "provider": model.provider,
            }
        )

    @api.get(
        "/model",
        response_model=ModelDescription,
        responses=NOT_READY,
        summary="The loaded model: manifest (public part), thresholds, target FPR, provider",
    )
    async def model() -> Response:
        return _json(holder.require().describe())

    @api.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api
