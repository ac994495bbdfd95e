"""The OpenAPI document: FastAPI's, plus the operations of routes that are plain ASGI apps.

POST /score is served by a raw ASGI endpoint (see `routes.score`), which FastAPI cannot
describe; its operation is declared beside the endpoint and merged in here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from vigil.service.schemas import ErrorResponse

REF = "#/components/schemas/{model}"


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def responses(ok: type[BaseModel], errors: dict[int, str]) -> dict[str, Any]:
    """An operation's responses: `ok` for 200, the one error shape for each error status."""
    out: dict[str, Any] = {
        "200": {
            "description": "Successful Response",
            "content": {"application/json": {"schema": ref(ok)}},
        }
    }
    for status, text in errors.items():
        out[str(status)] = {
            "description": text,
            "content": {"application/json": {"schema": ref(ErrorResponse)}},
        }
    return out


def install(
    app: FastAPI,
    paths: Callable[[], dict[str, dict[str, Any]]],
    models: list[type[BaseModel]],
) -> None:
    """Serve FastAPI's document with `paths()` (path -> method -> operation) and `models`
    added. The document is rebuilt when `paths()` changes (it follows the loaded model)."""
    built_for: list[dict[str, dict[str, Any]]] = []

    def openapi() -> dict[str, Any]:
        extra = paths()
        if built_for != [extra]:
            built_for[:] = [extra]
            app.openapi_schema = None
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            everything: list[type[BaseModel]] = [*models, ErrorResponse]
            for model in everything:
                definition = model.model_json_schema(ref_template=REF)
                for name, sub in definition.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components.setdefault(model.__name__, definition)
            schema["paths"] = {**extra, **schema.get("paths", {})}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
