"""Bad input gets a precise error in the one shape, costs nothing else, and the next good
request is served as usual."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from test_service_support import blob, encode, files, holder_of, make_settings, serving

from vigil.service.errors import ERROR_CODES
from vigil.service.model import ModelHolder

pytestmark = pytest.mark.anyio

MAX_FILES = 4
MAX_BODY = 300_000
MAX_PIXELS = 1_000_000
GOOD = encode(blob())
_IDAT = GOOD.index(b"IDAT")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def served(vae_bundle: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        vae_bundle, max_files=MAX_FILES, max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS
    )
    async with serving(settings) as pair:
        yield pair


@pytest.fixture
def client(served: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[1]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit side x side PNG of zeros: a few tens of KB that decode to side^2 pixels."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    rows_per_chunk = 64
    idat = b"".join(packer.compress(row * rows_per_chunk) for _ in range(side // rows_per_chunk))
    idat += packer.compress(row * (side % rows_per_chunk)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def assert_error(
    response: httpx.Response, status: int, code: str, filename: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert error.get("filename") == filename
    return error


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/score", files=files(("good.png", GOOD)))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["filename"] == "good.png"


BAD_FILES = {
    "not an image": (b"hello, I am text\n" * 20, 415, "not_an_image"),
    "truncated PNG": (GOOD[: len(GOOD) // 2], 422, "corrupt_image"),
    "corrupt PNG data": (GOOD[: _IDAT + 12] + bytes(16) + GOOD[_IDAT + 28 :], 422, "corrupt_image"),
    "empty file": (b"", 422, "empty_file"),
    "too many pixels": (encode(np.zeros((1001, 1000), np.uint8)), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
async def test_bad_file(client: httpx.AsyncClient, case: str) -> None:
    data, status, code = BAD_FILES[case]
    response = await client.post("/score", files=files(("bad.bin", data)))
    assert_error(response, status, code, "bad.bin")
    await assert_still_serving(client)


async def test_bad_file_among_good_fails_the_request_naming_it(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = served
    before = len(holder_of(app).metrics.batch_size.collect()[0].samples)
    scored = _samples_value(app, "vigil_images_scored_total")
    response = await client.post(
        "/score",
        files=files(("one.png", GOOD), ("two.txt", b"not an image"), ("three.png", GOOD)),
    )
    error = assert_error(response, 415, "not_an_image", "two.txt")
    assert "two.txt" in error["message"]
    assert _samples_value(app, "vigil_images_scored_total") == scored  # nothing was scored
    assert len(holder_of(app).metrics.batch_size.collect()[0].samples) == before
    await assert_still_serving(client)


def _samples_value(app: FastAPI, name: str) -> float:
    for family in holder_of(app).metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


async def test_raw_body_errors_have_no_filename(client: httpx.AsyncClient) -> None:
    response = await client.post("/score", content=b"nope", headers={"Content-Type": "image/png"})
    error = assert_error(response, 415, "not_an_image")
    assert "file #1" in error["message"]
    response = await client.post("/score", content=b"", headers={"Content-Type": "image/png"})
    assert_error(response, 422, "empty_file")
    await assert_still_serving(client)


async def test_decompression_bomb_is_refused_not_decoded(client: httpx.AsyncClient) -> None:
    data = bomb_png()
    assert len(data) < 100_000
    response = await client.post("/score", files=files(("bomb.png", data)))
    assert_error(response, 413, "too_many_pixels", "bomb.png")
    await assert_still_serving(client)


async def test_too_many_files(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/score", files=files(*[(f"{i}.png", GOOD) for i in range(MAX_FILES + 1)])
    )
    assert_error(response, 413, "too_many_files")
    ok = await client.post("/score", files=files(*[(f"{i}.png", GOOD) for i in range(MAX_FILES)]))
    assert ok.status_code == 200 and len(ok.json()["results"]) == MAX_FILES


async def test_body_too_large_by_content_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/score", content=b"x" * (MAX_BODY + 1), headers={"Content-Type": "image/png"}
    )
    assert_error(response, 413, "body_too_large")
    await assert_still_serving(client)


async def test_body_too_large_chunked_stops_reading(client: httpx.AsyncClient) -> None:
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):  # 40 x 64 KiB, far over the limit
            sent.append(1)
            yield b"\0" * 65536

    response = await client.post("/score", content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(response, 413, "body_too_large")
    assert len(sent) < 10  # refused once the limit passed, not after reading it all
    # multipart too
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'

    async def form() -> AsyncIterator[bytes]:
        yield head.encode()
        for _ in range(40):
            yield b"\0" * 65536

    response = await client.post(
        "/score",
        content=form(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413, "body_too_large")
    await assert_still_serving(client)


async def test_no_files(client: httpx.AsyncClient) -> None:
    response = await client.post("/score", data={"note": "hello"}, files={"other": ("x.png", GOOD)})
    error = assert_error(response, 422, "no_files")
    assert "'files'" in error["message"] and "'other'" in error["message"]
    response = await client.post("/score")
    assert_error(response, 422, "no_files")
    boundary = "xyz"
    response = await client.post(
        "/score",
        content=f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 422, "no_files")
    await assert_still_serving(client)


async def test_wrong_field_name(client: httpx.AsyncClient) -> None:
    response = await client.post("/score", files={"file": ("a.png", GOOD, "image/png")})
    error = assert_error(response, 422, "no_files")
    assert "'file'" in error["message"]
    await assert_still_serving(client)


async def test_malformed_multipart_and_media_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/score", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )
    assert_error(response, 400, "invalid_multipart")
    response = await client.post(
        "/score",
        content=b'--zz\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc',
        headers={"Content-Type": "multipart/form-data; boundary=zz"},
    )
    assert_error(response, 400, "invalid_multipart")
    response = await client.post(
        "/score", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert_error(response, 400, "invalid_multipart")
    response = await client.post("/score", json={"image": "base64?"})
    assert_error(response, 415, "unsupported_media_type")
    await assert_still_serving(client)


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.post("/score/extra/path"), 404, "not_found")
    response = await client.get("/score")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert_error(await client.delete("/healthz"), 405, "method_not_allowed")
    await assert_still_serving(client)


@pytest.mark.parametrize("value", ["0.0001", "0.9", "0", "1", "-1", "abc", "nan"])
async def test_bad_target_fpr(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(
        "/score", params={"target_fpr": value}, files=files(("a.png", GOOD))
    )
    assert_error(response, 422, "invalid_target_fpr")
    await assert_still_serving(client)


async def test_bad_query_flag(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/score", params={"heatmap": "maybe"}, files=files(("a.png", GOOD))
    )
    error = assert_error(response, 422, "invalid_request")
    assert "heatmap" in error["message"]


async def test_unexpected_exception_is_500_in_shape_and_logged(
    served: tuple[FastAPI, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, client = served
    model = holder_of(app).current
    assert model is not None

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(model.judge, "judge", broken)
    with caplog.at_level(logging.ERROR, logger="vigil.app"):
        response = await client.post("/score", files=files(("a.png", GOOD)))
    assert_error(response, 500, "internal_error")
    assert "a bug" not in response.text  # no internals leak to the client
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    await assert_still_serving(client)
    assert model.leases == 0  # the failed request returned its lease


async def test_not_ready_before_a_model_loads(tmp_path: Path) -> None:
    async with serving(make_settings(tmp_path / "missing")) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        for response in (
            await client.get("/readyz"),
            await client.get("/model"),
            await client.post("/score", files=files(("a.png", GOOD))),
        ):
            error = assert_error(response, 503, "not_ready")
            assert "missing" in error["message"]
        text = (await client.get("/metrics")).text
        assert "vigil_ready 0.0" in text


async def test_required_gpu_missing_fails_readiness(vae_bundle: Path) -> None:
    async with serving(make_settings(vae_bundle, require_gpu=True, max_batch=1)) as (_, client):
        error = assert_error(await client.get("/readyz"), 503, "provider_unavailable")
        assert "CUDAExecutionProvider is required" in error["message"]
        scored = await client.post("/score", files=files(("a.png", GOOD)))
        assert_error(scored, 503, "provider_unavailable")


def test_model_holder_starts_empty(vae_bundle: Path) -> None:
    from vigil.service.metrics import Metrics

    holder = ModelHolder(make_settings(vae_bundle), Metrics())
    with pytest.raises(Exception, match="loading"):
        holder.require()


async def test_a_dead_inference_thread_fails_readiness(vae_bundle: Path) -> None:
    """A bug that kills the inference thread: 503 for requests and /readyz, not a hang."""

    class Crash(BaseException):
        pass

    def crash(batch: np.ndarray, with_map: bool) -> dict[str, np.ndarray]:
        raise Crash

    async with serving(make_settings(vae_bundle)) as (app, client):
        model = holder_of(app).current
        assert model is not None
        model.batcher.infer = crash
        response = await client.post("/score", files=files(("a.png", GOOD)))
        assert response.status_code == 503
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "inference thread" in ready.json()["error"]["message"]


def test_readme_documents_every_error_code() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [code for code in ERROR_CODES if f"`{code}`" not in readme]
    assert not missing, f"add these to README's error table: {missing}"
