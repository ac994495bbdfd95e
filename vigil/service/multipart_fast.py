"""A whole multipart body in its plainest form, split without python-multipart's state machine.

Hand-written for speed: a one-image body of a few KB (the common /score request) is
split several times cheaper than python-multipart parses it, a measurable share of a
request's Python work (the figures: BENCHMARKS.md, "What was done to the hot path").
Plainest form: no preamble, each part's headers one
`name: value` per line, each delimiter followed by CRLF or by the closing `--`, all
within python-multipart's limits. Anything else is declined and goes to python-multipart,
so odd bodies get its answer; `tests/test_multipart_fast.py` holds the two to the same
files or the same error, on hand-made and on thousands of randomly damaged bodies.
"""

from __future__ import annotations

import re

from python_multipart.multipart import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    MAX_BOUNDARY_LENGTH,
)

from vigil.service.form import FormReader

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110)


def split_form(body: bytes, boundary: bytes, max_files: int) -> FormReader | None:
    """The form's parts read into a `FormReader`, or None when the body is not plain."""
    delimiter = b"--" + boundary
    if len(boundary) >= MAX_BOUNDARY_LENGTH or not body.startswith(delimiter + b"\r\n"):
        return None
    separator = b"\r\n" + delimiter
    reader = FormReader(max_files)
    start = len(delimiter) + 2
    while True:
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0 or body.startswith(b"\r\n", start):  # no end, or no headers
            return None
        data_start = head_end + 4
        data_end = body.find(separator, data_start)
        if data_end < 0:
            return None
        reader.on_part_begin()
        if not _read_headers(body[start:head_end], reader):
            return None
        reader.on_headers_finished()
        if reader.wants_data:
            reader.on_part_data(body, data_start, data_end)
        reader.on_part_end()
        after = data_end + len(separator)
        if body.startswith(b"--", after):
            reader.on_end()  # the closing delimiter; an epilogue after it is ignored
            return reader
        if not body.startswith(b"\r\n", after):
            return None  # transport padding after a delimiter, or junk
        start = after + 2


def _read_headers(block: bytes, reader: FormReader) -> bool:
    """Give one part's header lines to `reader`; False for anything but plain `name: value`."""
    lines = block.split(b"\r\n")
    if len(lines) >= DEFAULT_MAX_HEADER_COUNT:
        return False
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None or b"\r" in value or b"\n" in value:
            return False  # folded, malformed or oddly spaced header: let the parser judge
        if len(line) >= DEFAULT_MAX_HEADER_SIZE:
            return False
        reader.header(name, value.lstrip(b" \t"))
    return True
