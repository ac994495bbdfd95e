"""Schemathesis hooks (SCHEMATHESIS_HOOKS): real images for the image media types, and
Vigil's own checks on every response, beside schemathesis' built-in ones.

- Image parts and raw image bodies are real images (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM,
  of random size, mode and pixels within the pixel limit): schema-valid /score requests
  can then be held to a 200, which random bytes never earn.
- `one_error_shape`: every 4xx/5xx body is `{"error": {"code", "message", "filename"?}}`
  with a code of the error table whose status is the answer's status.
- `nothing_revealed`: no answer carries the admin token, a path of the server's models
  folder, or a traceback.
- `limits_hold`: a 200 from /score never scored more files than VIGIL_MAX_FILES, nor came
  from a body over VIGIL_MAX_BODY_BYTES.
- `Tally`: counts the answers per operation and status, written to $VIGIL_FUZZ_TALLY.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image

from vigil.service.errors import ERROR_CODES

MAX_SIDE = 64  # images up to 64x64: under the pixel limit the fuzzed server runs with
FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
    "image/webp": "WEBP",
    "image/x-portable-anymap": "PPM",
}
MODES = {"L": 1, "RGB": 3, "RGBA": 4}
SAVES_MODE = {"JPEG": ("L", "RGB"), "PPM": ("L", "RGB"), "BMP": ("L", "RGB")}


@st.composite
def image_bytes(draw: st.DrawFn, fmt: str) -> bytes:
    width = draw(st.integers(1, MAX_SIDE))
    height = draw(st.integers(1, MAX_SIDE))
    mode = draw(st.sampled_from(SAVES_MODE.get(fmt, tuple(MODES))))
    pixels = draw(st.binary(min_size=width * height * MODES[mode], max_size=width * height * MODES[mode]))  # fmt: skip
    buffer = io.BytesIO()
    Image.frombytes(mode, (width, height), pixels).save(buffer, format=fmt)
    return buffer.getvalue()


for media_type, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media_type, image_bytes(fmt))


def _secrets() -> list[str]:
    return [s for s in os.environ.get("VIGIL_FUZZ_SECRETS", "").split(os.pathsep) if s]


@schemathesis.check
def one_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"error as {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body}"
    error = body["error"]
    assert set(error) in ({"code", "message"}, {"code", "message", "filename"}), error
    assert isinstance(error["message"], str) and error["message"], error
    code = ERROR_CODES.get(error["code"])
    assert code is not None, f"undocumented error code {error['code']!r}"
    assert code.status == response.status_code, f"{error['code']} answered {response.status_code}"
    return True


@schemathesis.check
def nothing_revealed(ctx: Any, response: Any, case: Any) -> bool | None:
    text = response.content.decode("utf-8", "replace")
    for secret in _secrets():
        assert secret not in text, "an answer reveals a secret or a server path"
    # (a bare "Traceback" may be the client's own words echoed, e.g. a form field's name)
    assert "Traceback (most recent call last)" not in text, "an answer carries a traceback"
    assert 'File "/' not in text, "an answer carries a traceback's frame"
    return True


@schemathesis.check
def limits_hold(ctx: Any, response: Any, case: Any) -> bool | None:
    if case.operation.path != "/score" or response.status_code != 200:
        return None
    files = len(json.loads(response.content)["results"])
    assert files <= int(os.environ["VIGIL_MAX_FILES"]), f"{files} files scored"
    body = response.request.body or b""
    size = len(body if isinstance(body, bytes) else str(body).encode())
    assert size <= int(os.environ["VIGIL_MAX_BODY_BYTES"]), f"a {size}-byte body scored"
    return True


@schemathesis.check
class Tally:
    """Answers per operation and status (shrinking and replays may count a case twice)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def after_response(self, ctx: Any, response: Any, case: Any) -> bool | None:
        self.seen[f"{case.method.upper()} {case.operation.path} {response.status_code}"] += 1
        return None

    def after_run(self, ctx: Any) -> None:
        path = os.environ.get("VIGIL_FUZZ_TALLY")
        if path:
            with open(path, "w") as out:
                json.dump(dict(sorted(self.seen.items())), out, indent=1)
