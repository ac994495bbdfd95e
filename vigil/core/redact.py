"""Filesystem paths out of what clients read: error messages, GET /model, the report.

Bundle errors name the files they are about (`bundle /srv/models/x has no manifest.json`),
and a manifest records where its training data lay. That helps whoever runs the command;
a client of the service, anonymous on /readyz or /score, learns the server's layout from
it. Each absolute path is shown as its last component, the file or folder's own name,
which is what a reader of the message needs.
"""

from __future__ import annotations

import re
from pathlib import PureWindowsPath
from typing import Any

# An absolute POSIX path of two or more components (a lone "/docs" is a route, kept), not
# inside a URL or a relative path; or a Windows one (C:\data\x, a bundle trained there).
_POSIX = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`,;()<>\[\]{}]+){2,}/?")
_WINDOWS = re.compile(r"\b[A-Za-z]:\\(?:[^\s\\'\"`,;()<>]+\\)*[^\s\\'\"`,;()<>]*")
# Manifest fields that hold a path even when relative (training/config.py).
PATH_FIELDS = frozenset({"out", "data", "anomaly_data"})


def text(message: str) -> str:
    """`message` with each absolute path replaced by its last component."""
    message = _POSIX.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
    return _WINDOWS.sub(lambda m: PureWindowsPath(m.group(0)).name, message)


def document(data: Any, key: str | None = None) -> Any:
    """A JSON-like document with every string redacted; the fields in PATH_FIELDS are
    reduced to their last component even when relative."""
    if isinstance(data, dict):
        return {k: document(v, k) for k, v in data.items()}
    if isinstance(data, list):
        return [document(v) for v in data]
    if isinstance(data, str):
        if key in PATH_FIELDS and ("/" in data or "\\" in data):
            return PureWindowsPath(data.replace("/", "\\")).name or data
        return text(data)
    return data
