"""The HTTP protocol under uvicorn: a bound on a request's head, and its errors in our shape.

uvicorn's httptools protocol buffers a request line and headers of any size (a 200 MB
header held 380 MB of memory, RELIABILITY.md); the body limit (`BodyLimit`) only sees the
body, after the head. `HeadLimitedHttpTools` refuses a head over `VIGIL_MAX_HEADER_BYTES`
with 431 `headers_too_large` and closes the connection:

- while a head is incomplete, the bytes read for it are counted, and the connection is
  refused once they pass the limit (so at most one read, 64 KiB, is buffered beyond it);
- a head that arrived complete is measured (request target, header names and values).

uvicorn answers a request it cannot parse with a plain-text 400; here it is the one error
shape (400 `bad_request`). Bodies are never counted: the head is complete before they start.

At shutdown uvicorn closes every connection without a request in progress. A connection
that has not started a request yet was opened by a client whose request is on its way
(the drain's `Connection: close` answers make clients open new ones until the listener
stops queueing them, `service.drain`): it still gets `FIRST_REQUEST_GRACE_S` for that
request, which is answered with `Connection: close`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vigil.service.errors import ERROR_CODES, error_body

REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}
FIRST_REQUEST_GRACE_S = 1.0


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops, uvicorn calls `send_400_response`."""


class HeadLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over `max_header_bytes`."""

    max_header_bytes = 64 * 1024  # set by `limited(...)`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = None  # bytes read for an incomplete head, else None
        self._refusing = False
        self._last_request = False  # shutting down: answer one request, then close

    def shutdown(self) -> None:
        if self.cycle is None and not self.transport.is_closing():  # no request started yet
            self._last_request = True
            self.loop.call_later(FIRST_REQUEST_GRACE_S, self._close_if_no_request)
            return
        super().shutdown()

    def _close_if_no_request(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size > self.max_header_bytes:
            self._refusing = True
            raise HeadTooLarge
        super().on_headers_complete()
        if self._last_request:
            self.cycle.keep_alive = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return
        self._head_bytes += len(data)  # the head is still incomplete after this read
        if self._head_bytes > self.max_header_bytes:
            self._refusing = True
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to an unparseable request (and ours to a head too large)."""
        self._head_bytes = None
        if self._refusing:
            code, text = "headers_too_large", f"the request line and headers are over {self.max_header_bytes} bytes"  # fmt: skip
        else:
            code, text = "bad_request", f"the request cannot be parsed as HTTP/1.1: {msg}"
        body = error_body(code, text)
        status = ERROR_CODES[code].status
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, REASONS[status], len(body))
        )
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()


def limited(max_header_bytes: int) -> type[HeadLimitedHttpTools]:
    """The protocol class for a server whose request heads are at most `max_header_bytes`."""
    return type("HeadLimitedHttpTools", (HeadLimitedHttpTools,), {"max_header_bytes": max_header_bytes})  # fmt: skip
