"""Security checks: the admin token, what responses and logs reveal, which decoders run.

(Body, file-count and pixel limits under fuzzing: test_reliability_fuzz.py; the container
as a non-root user on a read-only root filesystem: test_deploy.py statically and
test_containers.py for real; the dependency audit: test_reliability_audit.py.)
"""

from __future__ import annotations

import hmac
import io
import json
import re
import shutil
import signal
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_blobs, train_bundle
from PIL import Image
from test_service_support import blob, encode, files, make_settings, serving

import vigil.service.routes.admin as admin
from benchmarks.reliability.server import start
from vigil.core import redact
from vigil.core.preprocess import ImageError, decode_image

TOKEN = "tok-7f3a9c1e5b2d8f4a6c0e"  # distinctive: found anywhere means leaked
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = encode(blob())


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------- the token


@pytest.mark.parametrize("given", ["", "x", TOKEN[:-1], TOKEN + "x", TOKEN * 40, TOKEN])
def test_the_token_is_compared_in_constant_time_whatever_its_length(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    assert admin.same_secret(given, TOKEN) is (given == TOKEN)
    assert compared == [(32, 32)]  # digests: the same length whatever was sent


# ------------------------------------------------------------ what responses reveal


def leaks(text: str, secrets: list[str]) -> list[str]:
    found = [s for s in secrets if s in text]
    if re.search(r"Traceback|File \"/|line \d+, in ", text):
        found.append("a traceback")
    return found


@pytest.fixture(scope="module")
def reported_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with its training report, under a folder whose name must never be served."""
    root = tmp_path_factory.mktemp("srv-private-layout")
    np.savez(root / "private-data.npz", images=make_blobs(200))
    return train_bundle(root / "models" / "parts", str(root / "private-data.npz"), report=True)


@pytest.mark.anyio
async def test_no_response_reveals_the_token_a_server_path_or_a_traceback(
    reported_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = reported_bundle.parent
    broken = shutil.copytree(reported_bundle, models / "broken")
    (broken / "model.onnx").write_bytes(b"not a graph")
    secrets = [TOKEN, str(models.parent), "srv-private-layout", "/usr/share", str(tmp_path)]
    settings = make_settings(reported_bundle, admin_token=TOKEN, models_dir=models, max_batch=2)
    answers: list[httpx.Response] = []
    async with serving(settings) as (_, client):
        for path in ["/", "/healthz", "/readyz", "/model", "/metrics", "/openapi.json", "/docs",
                     "/report/index.html", "/report/report.md", "/report/metrics.json",
                     "/report/../manifest.json", "/static/../../settings.py", "/nope"]:  # fmt: skip
            answers.append(await client.get(path))
        for body in [GOOD, b"not an image", GOOD[:40], b""]:
            answers.append(await client.post("/score", files=files(("/home/u/a.png", body))))
        answers.append(await client.post("/score?target_fpr=7", content=GOOD))
        for auth in [{}, {"Authorization": "Bearer wrong"}, AUTH]:
            for bundle in ["broken", "missing", "/etc", "../..", str(broken)]:
                answers.append(
                    await client.post("/admin/reload", json={"bundle": bundle}, headers=auth)
                )

        def bug(*args: object) -> None:
            raise RuntimeError(f"a bug at {tmp_path}/internal.py with {TOKEN}")

        monkeypatch.setattr("vigil.service.routes.probes.describe", bug)
        answers.append(await client.get("/model"))
        report = await client.get("/report/index.html")
    assert report.status_code == 200 and "private-data.npz" in report.text  # named, not placed
    statuses = {a.status_code for a in answers}
    assert {200, 401, 403, 404, 413, 415, 422, 500} - statuses <= {413}, statuses
    for answer in answers:
        text = answer.text + json.dumps(dict(answer.headers))
        assert not leaks(text, secrets), (answer.request.url, answer.status_code, answer.text[:300])
    # the failed reload still says what is wrong, naming the file by its own name
    invalid = [a.json()["error"] for a in answers if a.status_code == 422]
    assert any(
        e["code"] == "invalid_bundle" and "model.onnx has sha256" in e["message"] for e in invalid
    )


@pytest.mark.anyio
async def test_a_failed_start_up_load_names_no_server_path(tmp_path: Path) -> None:
    hidden = tmp_path / "srv" / "models" / "tshirt"
    async with serving(make_settings(hidden)) as (_, client):
        answers = [await client.get("/readyz"), await client.post("/score", content=GOOD)]
    for answer in answers:
        assert answer.status_code == 503
        message = answer.json()["error"]["message"]
        assert "tshirt" in message and str(tmp_path) not in message and "srv" not in message


def test_redaction_keeps_names_routes_and_urls() -> None:
    assert redact.text("bundle /srv/models/x has no manifest.json") == (
        "bundle x has no manifest.json"
    )
    assert (
        redact.text("loading /a/b/ failed: C:\\data\\parts\\m.onnx") == "loading b failed: m.onnx"
    )
    kept = "see /docs, http://127.0.0.1:8000/score, a/b/c, image/png and 0.5 / 2"
    assert redact.text(kept) == kept
    doc = {"training": {"config": {"out": "models/x", "data": "fashion-mnist"}, "n": 3}}
    assert redact.document(doc) == {"training": {"config": {"out": "x", "data": "fashion-mnist"}, "n": 3}}  # fmt: skip


# --------------------------------------------------------------------------- the logs


@pytest.mark.slow
def test_the_token_never_reaches_the_logs(vae_bundle: Path, tmp_path: Path) -> None:
    env = {
        "VIGIL_ADMIN_TOKEN": TOKEN,
        "VIGIL_ACCESS_LOG": "true",
        "VIGIL_LOG_LEVEL": "debug",
        "VIGIL_DRAIN_S": "0",
    }
    server = start(vae_bundle, tmp_path / "serve.log", env)
    try:
        with httpx.Client(base_url=server.base, trust_env=False, timeout=30) as client:
            for headers in [AUTH, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}]:  # fmt: skip
                for body in [None, {"bundle": "nope"}, {"bundle": vae_bundle.name}]:
                    client.post("/admin/reload", json=body, headers=headers)
            client.post("/score", files=files(("a.png", GOOD)), headers=AUTH)
    finally:
        assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    log = server.log.read_text()
    assert "POST /admin/reload" in log  # the access log was on
    assert TOKEN not in log


# ----------------------------------------------------------------- what is decoded


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PCX", "SGI", "EPS", "PSD", "DDS"])
def test_only_the_listed_formats_are_decoded(fmt: str) -> None:
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (KeyError, OSError):  # Pillow writes only some of them; the header is enough
        buffer = io.BytesIO({"EPS": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
                             "PSD": b"8BPS\x00\x01" + bytes(20)}.get(fmt, b""))  # fmt: skip
    with pytest.raises(ImageError) as refused:
        decode_image(buffer.getvalue(), 10_000)
    assert refused.value.code in {"not_an_image", "empty_file"}


# ------------------------------------------------------------------- request heads


@pytest.mark.slow
def test_request_heads_are_bounded(vae_bundle: Path, tmp_path: Path) -> None:
    """uvicorn's httptools buffered a header of any size (200 MB: 380 MB more memory)."""
    server = start(vae_bundle, tmp_path / "serve.log", {"VIGIL_MAX_HEADER_BYTES": "16384", "VIGIL_DRAIN_S": "0"})  # fmt: skip

    def ask(head: bytes, then: bytes = b"") -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            try:
                conn.sendall(head)
                conn.sendall(then)
            except OSError:  # closed while sending: the answer is already there
                pass
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            return answer

    try:
        small = ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 12_000 + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
        assert small.startswith(b"HTTP/1.1 200 ")
        before = server.rss_mib()
        huge = ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 50_000_000)
        long_url = ask(b"GET /healthz?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        for answer in (huge, long_url):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head
            assert json.loads(body)["error"]["code"] == "headers_too_large"
        assert server.rss_mib() - before < 20  # nothing like 50 MB was held
        garbage = ask(b"\x16\x03\x01 not HTTP at all\r\n\r\n")  # e.g. TLS to a plain port
        assert garbage.startswith(b"HTTP/1.1 400 ")
        assert json.loads(garbage.partition(b"\r\n\r\n")[2])["error"]["code"] == "bad_request"
        upload = encode(np.zeros((1000, 1000), np.uint8))  # bodies are not counted
        boundary = "b0undary"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n').encode() + upload + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
        scored = ask(
            (f"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
             f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode(), body,
        )  # fmt: skip
        assert scored.startswith(b"HTTP/1.1 200 "), scored[:300]
    finally:
        server.stop()
