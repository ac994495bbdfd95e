"""The browser page's routes, in-process: GET /, /static/*, /report/* (read-only, nothing
outside its folder), and what /score adds for the page (`reconstruction` with heatmap=true).

The page itself is driven in a real browser by tests/test_page_browser.py."""

from __future__ import annotations

import base64
import io
import re
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_service_support import copy_bundle, encode, files, make_settings, serving, tshirt

from vigil.core.bundle import read_manifest
from vigil.service.routes.page import STATIC
from vigil.service.schemas import ScoreResponse

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
PNG = encode(np.full((4, 4), 128, np.uint8))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def reported(vae_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the VAE bundle with a small report/, a secret beside the bundle, and
    symlinks out of the report folder."""
    root = tmp_path_factory.mktemp("page")
    bundle = copy_bundle(vae_bundle, root / "bundle")
    report = bundle / "report"
    report.mkdir()
    (report / "index.html").write_text(
        '<html><body><figure><img src="roc.png"></figure></body></html>'
    )
    (report / "roc.png").write_bytes(PNG)
    (report / "plots").mkdir()
    (report / "plots" / "deep.png").write_bytes(PNG)
    (root / "secret.txt").write_text("outside")
    (report / "secret.png").symlink_to(root / "secret.txt")
    (report / "bundle").symlink_to(bundle)
    (report / "loop.png").symlink_to(report / "loop.png")
    return bundle


@pytest.fixture(scope="module")
async def client(reported: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_settings(reported)) as (_, client):
        yield client


def assert_not_found(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "not_found"
    assert isinstance(body["error"]["message"], str)
    return body["error"]


async def test_index_is_the_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def static_files() -> list[str]:
    return sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file())


async def test_static_assets_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    types = {".js": "javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg"}
    names = static_files()
    assert {"index.html", "app.js", "style.css"} <= set(names)
    for name in names:
        response = await client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (STATIC / name).read_bytes()
        assert types[Path(name).suffix] in response.headers["content-type"], name
        assert response.headers["cache-control"] == "no-cache"


def test_every_asset_and_module_the_page_loads_exists_and_nothing_comes_from_elsewhere() -> None:
    html = (STATIC / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="/static/([^"]+)"', html))
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        referenced |= set(re.findall(r'from "\./([^"]+)"', text))
        # file names and bundle contents go in as text, never as markup
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML", text), script.name
    assert referenced and referenced <= set(static_files())
    for path in STATIC.iterdir():
        external = re.findall(r"https?://(?!www\.w3\.org/)[^\s\"')]+", path.read_text())
        assert not external, (path.name, external)  # no CDN


def test_the_assets_ship_in_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["vigil.service"]
    assert all(any(fnmatch(f"static/{n}", p) for p in patterns) for n in static_files())


async def test_the_page_routes_stay_out_of_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not {"/", "/static/{path}", "/report/{path}"} & set(paths)


async def test_report_files_are_served(client: httpx.AsyncClient, reported: Path) -> None:
    response = await client.get("/report/index.html")
    assert response.status_code == 200
    assert response.text == (reported / "report" / "index.html").read_text()
    assert response.headers["content-security-policy"].startswith("sandbox")
    for name in ("roc.png", "plots/deep.png"):
        response = await client.get(f"/report/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == PNG


@pytest.mark.parametrize(
    "path",
    [
        "/report/..%2Fmanifest.json",
        "/report/%2e%2e/manifest.json",
        "/report/plots/..%2F..%2Fmanifest.json",
        "/report/%2Fetc%2Fpasswd",
        "/report//etc/passwd",
        "/report/secret.png",  # a symlink out of the report folder
        "/report/bundle/manifest.json",  # a symlinked folder out of it
        "/report/loop.png",
        "/report/missing.png",
        "/report/plots",
        "/report/",
        "/report/a%00b",
        "/static/..%2Froutes%2Fpage.py",
        "/static/%2e%2e/app.py",
        "/static/nope.js",
    ],
)
async def test_nothing_outside_the_folders_is_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    error = assert_not_found(response)
    assert "outside" not in response.text and "schema_version" not in response.text
    assert error["message"]


async def test_a_bundle_without_report(vae_bundle: Path) -> None:
    assert not (vae_bundle / "report").exists()
    async with serving(make_settings(vae_bundle)) as (_, client):
        error = assert_not_found(await client.get("/report/index.html"))
        assert "--no-report" in error["message"]
        assert (await client.get("/")).status_code == 200


async def test_heatmap_brings_the_reconstruction(client: httpx.AsyncClient, reported: Path) -> None:
    spec = read_manifest(reported).input
    image = encode(tshirt())
    plain = await client.post("/score", files=files(("t.png", image)))
    (result,) = plain.json()["results"]
    assert "reconstruction" not in result and "heatmap" not in result
    response = await client.post(
        "/score", params={"heatmap": "true"}, files=files(("t.png", image))
    )
    body = response.json()
    ScoreResponse.model_validate(body)
    (mapped,) = body["results"]
    assert mapped["scores"] == result["scores"]
    recon = Image.open(io.BytesIO(base64.b64decode(mapped["reconstruction"])))
    assert recon.format == "PNG" and recon.mode == spec.color_mode
    assert recon.size == (spec.width, spec.height)
    pixels = np.asarray(recon)
    assert pixels.std() > 0  # an image, not a constant
    # a T-shirt's reconstruction looks like the T-shirt: bright where it is bright
    original = tshirt().astype(np.float64)
    assert np.corrcoef(original.ravel(), pixels.astype(np.float64).ravel())[0, 1] > 0.5


async def test_openapi_documents_the_reconstruction(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    (heatmap,) = [
        p for p in schema["paths"]["/score"]["post"]["parameters"] if p["name"] == "heatmap"
    ]
    assert "reconstruction" in heatmap["description"]
    assert "reconstruction" in schema["components"]["schemas"]["ScoreResult"]["properties"]
