"""JSON out: the one encoder (orjson) and the two ways a JSON body leaves the service."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response
from starlette.types import Send

JSON = "application/json"


def dumps(data: object) -> bytes:
    """JSON bytes; NaN and infinities (which JSON lacks) become null."""
    return orjson.dumps(data)


def json_response(
    body: bytes | object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON `Response` of `body` (bytes already encoded, or data to encode)."""
    content = body if isinstance(body, bytes) else dumps(body)
    return Response(content, status, dict(headers) if headers else None, media_type=JSON)


async def send_json(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """For raw ASGI handlers: send what `json_response(body, status, headers)` would."""
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", JSON.encode())]
    if headers:
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        names = {name for name, _ in extra}
        raw = extra + [h for h in raw if h[0] not in names]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
