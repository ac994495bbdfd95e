"""A small HTTP/1.1 client on raw asyncio streams that tells apart how each request ended.

httpx and the like retry, pool and hide a connection's fate; a reliability check needs to
know exactly what happened: answered, refused before anything was sent, sent and never
answered, or cut in the middle of its answer; and whether the connection was new or kept
alive from an earlier answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field

HOST = "127.0.0.1"  # every check talks to this address only


class Fate(enum.Enum):
    ANSWERED = "answered"
    REFUSED = "refused"  # the connection could not be opened: nothing was sent
    UNANSWERED = "unanswered"  # sent, then the connection closed before any answer byte
    CUT = "cut"  # part of an answer, then the connection closed
    TIMEOUT = "timeout"  # no complete answer within the client's timeout


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


@dataclass
class Result:
    fate: Fate
    answer: Answer | None = None
    reused: bool = False  # sent on a connection that had answered before
    error: str = ""


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 request (Content-Length set from `body` unless given)."""
    fields = {"Host": HOST, **(headers or {})}
    if body or method in ("POST", "PUT"):
        fields.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


@dataclass
class Connection:
    """One client connection, reopened after an answer that says `Connection: close`."""

    port: int
    timeout: float = 30.0
    answered: int = 0  # answers on the current connection
    _reader: asyncio.StreamReader | None = field(default=None, repr=False)
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    async def send(self, raw: bytes) -> Result:
        if self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
            except OSError as exc:
                return Result(Fate.REFUSED, error=type(exc).__name__)
            self.answered = 0
        reused = self.answered > 0
        try:
            async with asyncio.timeout(self.timeout):
                self._writer.write(raw)
                await self._writer.drain()
                answer = await read_answer(self._reader)  # type: ignore[arg-type]
        except TimeoutError:
            await self.close()
            return Result(Fate.TIMEOUT, reused=reused, error="timeout")
        except _Cut as exc:
            await self.close()
            return Result(Fate.CUT, reused=reused, error=str(exc))
        except (OSError, asyncio.IncompleteReadError, _Unanswered) as exc:
            await self.close()
            return Result(Fate.UNANSWERED, reused=reused, error=type(exc).__name__)
        self.answered += 1
        if answer.closes:
            await self.close()
        return Result(Fate.ANSWERED, answer, reused)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Unanswered(Exception):
    """The connection ended before the first byte of an answer."""


class _Cut(Exception):
    """The connection ended inside an answer."""


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Unanswered from exc
        raise _Cut(f"headers cut after {len(exc.partial)} bytes") from exc
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _chunked(reader)
        else:
            body = b""
    except (asyncio.IncompleteReadError, OSError) as exc:
        raise _Cut(f"body cut: {type(exc).__name__}") from exc
    return Answer(status, headers, body)


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
