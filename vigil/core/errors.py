"""The base of every error a user can act on, shared by training, the service and batch scoring.

Domain code raises these; what a client sees of them (an HTTP status, an exit code, an
`error` column) is decided at the edge, from `code`.
"""

from __future__ import annotations


class VigilError(Exception):
    """An error with a stable, machine-readable `code` (the API's error code) and a message."""

    code = "error"
    # For a condition that passes (an overload): whole seconds after which a retry may
    # succeed. The service answers it as Retry-After.
    retry_after_s: int | None = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
