"""The whole-body multipart splitter against python-multipart: the same files or the same error."""

from __future__ import annotations

import random
from typing import Any

import pytest

from vigil.service.errors import ApiError
from vigil.service.form import FormReader
from vigil.service.multipart_fast import split_form
from vigil.service.uploads import parser, read_uploads

B = b"b0undary"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--b0und\r\n\r\n-- not a delimiter"


def part(name: str | None = "files", filename: str | None = "a.png", data: bytes = PNG, extra: bytes = b"") -> bytes:  # fmt: skip
    disposition = b"Content-Disposition: form-data"
    if name is not None:
        disposition += f'; name="{name}"'.encode()
    if filename is not None:
        disposition += f'; filename="{filename}"'.encode()
    return disposition + b"\r\n" + extra + b"\r\n" + data


def form(*parts: bytes, preamble: bytes = b"", close: bytes = b"--\r\n") -> bytes:
    body = preamble + b"".join(b"--" + B + b"\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + B + close


BODIES: dict[str, tuple[bytes, bool]] = {  # body, whether the splitter must take it
    "one file": (form(part()), True),
    "three files": (form(part(), part(filename="b.png", data=b"xy"), part(filename="c")), True),
    "file and other field": (form(part(name="note", filename=None, data=b"hi"), part()), True),
    "only another field": (form(part(name="note", filename=None, data=b"hi")), True),
    "no name": (form(part(name=None)), True),
    "no filename": (form(part(filename=None)), True),
    "empty file": (form(part(data=b"")), True),
    "content-type header": (form(part(extra=b"Content-Type: image/png\r\n")), True),
    "lower-case header": (form(b'content-disposition: form-data; name="files"\r\n\r\nxx'), True),
    "no space after colon": (form(b'Content-Disposition:form-data; name="files"\r\n\r\nxx'), True),
    "tab after colon": (form(b'Content-Disposition:\tform-data; name="files"\r\n\r\nxx'), True),
    "quoted semicolon": (form(part(filename="a;b.png")), True),
    "escaped quote": (
        form(b'Content-Disposition: form-data; name="files"; filename="a\\"b"\r\n\r\nx'),
        True,
    ),
    "utf-8 filename": (form(part(filename="été.png")), True),
    "epilogue": (form(part(), close=b"--\r\nepilogue"), True),
    "no CRLF after close": (form(part(), close=b"--"), True),
    "too many files": (form(part(), part(), part()), True),
    "preamble": (form(part(), preamble=b"hello\r\n"), False),
    "no closing delimiter": (form(part(), close=b"\r\n"), False),
    "truncated": (form(part())[:-20], False),
    "padding after delimiter": (form(part()).replace(B + b"\r\n", B + b"  \r\n", 1), False),
    "folded header": (form(b'Content-Disposition: form-data;\r\n name="files"\r\n\r\nxx'), False),
    "space before colon": (form(b'Content-Disposition : form-data; name="files"\r\n\r\nxx'), False),
    "no headers": (form(b"\r\nxx"), False),
    "header without colon": (form(b"Content-Disposition form-data\r\n\r\nxx"), False),
    "empty": (b"", False),
    "nine headers": (form(part(extra=b"".join(b"X-%d: y\r\n" % i for i in range(8)))), False),
    "5,000-byte header": (form(part(extra=b"X-Pad: " + b"y" * 5000 + b"\r\n")), False),
    "too many files, nine headers on the third": (
        form(part(), part(), part(extra=b"".join(b"X-%d: y\r\n" % i for i in range(8)))),
        False,
    ),
}


def outcome(run: Any) -> tuple[Any, ...]:
    try:
        reader = run()
    except ApiError as exc:
        return ("error", exc.status, exc.code)
    if reader is None:
        return ("declined",)
    files = [(f.filename, f.data) for f in reader.files]
    return ("ok", files, reader.other_fields, reader.ended)


def streamed(body: bytes, max_files: int) -> FormReader:
    reader = FormReader(max_files)
    feed = parser(B, reader)
    for i in range(0, len(body), 7):  # in small chunks, as a slow client would send it
        feed(body[i : i + 7])
    feed(None)
    return reader


@pytest.mark.parametrize("name", sorted(BODIES))
def test_split_form_agrees_with_python_multipart(name: str) -> None:
    body, plain = BODIES[name]
    fast = outcome(lambda: split_form(body, B, 2))
    assert (fast != ("declined",)) == plain, fast
    if plain:
        assert fast == outcome(lambda: streamed(body, 2))


def test_split_form_agrees_on_mutated_bodies() -> None:
    """Random damage (CR, LF, dashes, boundaries, quotes inserted or cut) on the bodies above:
    whatever the splitter does not decline, python-multipart answers the same way."""
    rng = random.Random(0)
    pieces = [b"\r", b"\n", b"-", b":", b";", b" ", b"\t", b'"', b"=", B, b"--" + B, b"\r\n--" + B]
    bases = [body for body, _ in BODIES.values()]
    taken = 0
    for _ in range(3000):
        body = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(body) + 1)
            if rng.random() < 0.5:
                body[at:at] = rng.choice(pieces)
            else:
                del body[at : at + rng.randint(1, 4)]
        fast = outcome(lambda b=bytes(body): split_form(b, B, 2))
        if fast != ("declined",):
            taken += 1
            assert fast == outcome(lambda b=bytes(body): streamed(b, 2)), bytes(body)
    assert taken > 500  # the comparison ran on many bodies


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_overlong_boundary_is_a_400_not_a_crash() -> None:
    boundary = b"x" * 300
    body = b"--" + boundary + b"\r\n" + part() + b"\r\n--" + boundary + b"--\r\n"
    headers = [(b"content-type", b"multipart/form-data; boundary=" + boundary)]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    assert split_form(body, boundary, 2) is None  # python-multipart's limit decides
    with pytest.raises(ApiError) as caught:
        await read_uploads(headers, receive, 2)  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.code) == (400, "invalid_multipart")
