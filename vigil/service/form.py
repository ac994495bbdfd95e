"""The parts of a /score multipart form: which are files, how many, and what each is named.

`FormReader` takes python-multipart's callbacks, and the whole-body splitter
(`multipart_fast`) drives the same callbacks, so both readers give the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import parse_options_header

from vigil.service.errors import ApiError

FIELD = "files"
MAX_OTHER_FIELDS = 32  # names of other fields kept for the no_files message


@dataclass(slots=True)
class Upload:
    filename: str | None
    data: bytes


class FormReader:
    """Keeps the parts of the field `files` in memory; other parts' data is skipped."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.files: list[Upload] = []
        self.other_fields: list[str] = []
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._filename: str | None = None
        self._chunks: list[bytes] | None = None

    def callbacks(self) -> Any:  # python_multipart.multipart.MultipartCallbacks
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._filename = None
        self._chunks = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self.header(self._header_name, self._header_value)
        self._header_name = self._header_value = b""

    def header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-disposition":
            self._disposition = value

    @property
    def wants_data(self) -> bool:
        """Whether the current part is a file of the field `files` (else its data is skipped)."""
        return self._chunks is not None

    def on_headers_finished(self) -> None:
        """A part's headers are complete: the file count is enforced before its data."""
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ApiError("invalid_multipart", "a multipart part has no Content-Disposition name")
        if name.decode("utf-8", "replace") != FIELD:
            if len(self.other_fields) < MAX_OTHER_FIELDS:
                self.other_fields.append(name.decode("utf-8", "replace"))
            return
        if len(self.files) >= self.max_files:
            raise ApiError(
                "too_many_files",
                f"more than {self.max_files} files in one request; send at most {self.max_files}",
            )
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        self._chunks = []

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self._chunks is not None:
            self.files.append(Upload(self._filename, b"".join(self._chunks)))
            self._chunks = None

    def on_end(self) -> None:
        self.ended = True

    def uploads(self) -> list[Upload]:
        """The files of a finished form; `ApiError` for a form cut short or without files."""
        if not self.ended:
            raise ApiError(
                "invalid_multipart", "the multipart body ended before its closing boundary"
            )
        if not self.files:
            got = ", ".join(repr(name) for name in self.other_fields) or "none"
            raise ApiError("no_files", f"no file in the form field {FIELD!r} (fields sent: {got})")
        return self.files
