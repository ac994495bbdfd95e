"""Reading a /score request body: multipart files in the field `files`, or one raw image.

A multipart body that arrives in one piece and in the plainest form is split directly
(`multipart_fast`); any other is parsed by python-multipart while it streams in, straight
into memory (`BodyLimit` caps the body, so nothing is spooled to disk), with the file
count enforced as each part's headers arrive, before its data is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.types import Message, Receive

from vigil.service.errors import ApiError
from vigil.service.form import FIELD, FormReader, Upload
from vigil.service.multipart_fast import split_form

RAW_TYPES = (b"image/", b"application/octet-stream")
_HOW = (
    f"send multipart/form-data with one or more files in the field {FIELD!r}, "
    "or one raw image with Content-Type image/*"
)


async def read_uploads(
    headers: list[tuple[bytes, bytes]], receive: Receive, max_files: int
) -> list[Upload]:
    """The uploaded files, in order; `ApiError` for a body that does not carry any.

    `headers` are the request's raw ASGI headers (lower-case names), `receive` its channel.
    """
    mime, params = parse_options_header(_header(headers, b"content-type"))
    if mime == b"multipart/form-data":
        return await _read_form(receive, params, max_files)
    if mime.startswith(RAW_TYPES):
        return [Upload(None, await read_body(receive))]
    if not mime and _no_body(headers):
        raise ApiError("no_files", _HOW)
    raise ApiError(
        "unsupported_media_type",
        f"Content-Type {mime.decode('latin-1') or '(none)'} is not accepted; {_HOW}",
    )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), like `Request.headers.get`."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _no_body(headers: list[tuple[bytes, bytes]]) -> bool:
    length = _header(headers, b"content-length")
    return (length is None or length == b"0") and _header(headers, b"transfer-encoding") is None


async def read_body(receive: Receive) -> bytes:
    """The whole body, read from `receive` (400 client_disconnected if the client hangs up)."""
    body = bytearray()
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                if not body:
                    return bytes(chunk)  # the common case: the body came in one message
                body += chunk
                return bytes(body)
            body += chunk
        elif kind == "http.disconnect":
            raise _disconnected()


def _disconnected() -> ApiError:
    return ApiError("client_disconnected", "the client closed the connection mid-body")


async def _read_form(receive: Receive, params: dict[bytes, bytes], max_files: int) -> list[Upload]:
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError("invalid_multipart", "multipart/form-data without a boundary")
    message = await receive()
    whole = message["type"] == "http.request" and not message.get("more_body", False)
    reader = split_form(message.get("body", b""), boundary, max_files) if whole else None
    if reader is None:
        reader = FormReader(max_files)
        feed = parser(boundary, reader)
        async for chunk in _chunks(message, receive):
            feed(chunk)  # parsed as it arrives: the file count is checked early
        feed(None)
    return reader.uploads()


async def _chunks(first: Message, receive: Receive) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, starting with the message already received."""
    message = first
    while True:
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
        elif kind == "http.disconnect":
            raise _disconnected()
        message = await receive()


def parser(boundary: bytes, reader: FormReader) -> Callable[[bytes | None], None]:
    """python-multipart feeding `reader`: call it with each chunk, then with None at the end."""
    with _malformed():
        multipart = MultipartParser(boundary, reader.callbacks())  # checks the boundary

    def feed(chunk: bytes | None) -> None:
        with _malformed():
            if chunk is None:
                multipart.finalize()
            else:
                multipart.write(chunk)

    return feed


@contextmanager
def _malformed() -> Iterator[None]:
    try:
        yield
    except FormParserError as exc:
        raise ApiError("invalid_multipart", f"the multipart body is malformed: {exc}") from exc
