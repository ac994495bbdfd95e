"""The base of every error a user can act on, shared by training, the service and batch scoring.

Domain code raises these; what a client sees of them (an HTTP status, an exit code, an
`error` column) is decided at the edge, from `code`.
"""

from __future__ import annotations


class VigilError(Exception):
    """An error with a stable, machine-readable `code` (the API's error code) and a message."""

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
