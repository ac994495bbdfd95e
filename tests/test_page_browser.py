"""The page at GET /, driven in a real browser: Debian's chromium through Playwright.

A real `vigil serve` process serves a small trained bundle with a training report; the
test uploads a normal image, two anomalous ones and a file that is not an image, and
checks the page against /score: the same verdicts and scores, a rendered heatmap and
reconstruction, the API's own message beside the bad file's name, thresholds that follow
the target-FPR control (moved by keyboard), and the grid sorted most anomalous first.

It saves a screenshot to build/page.png, or to $VIGIL_PAGE_SCREENSHOT: the README's,
docs/page.png, is made by `VIGIL_PAGE_SCREENSHOT=docs/page.png .venv/bin/pytest
tests/test_page_browser.py`. $VIGIL_PAGE_BUNDLE serves another bundle instead (with its
own report, if it has one), e.g. models/default after ./vigil.sh train.

Needs `chromium` (apt-get install chromium) and `playwright` (the dev extra; its wheel
carries the driver, `playwright install` is not needed). Missing, the test skips, or
fails under VIGIL_REQUIRE_DEPLOY_TOOLS=1 (set by ./vigil.sh test, so in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import numpy as np
import pytest

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SCREENSHOT = Path(os.environ.get("VIGIL_PAGE_SCREENSHOT") or ROOT / "build" / "page.png")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else it keeps trying to reach the closed network
    "--disable-component-update",
    "--disable-sync",
]
NORMAL, ANOMALIES = "tshirt.png", ("sneaker.png", "bag.png")
BAD = ("notes.txt", b"these are notes, not an image\n")
# ArrowRight presses on the FPR slider (120 log steps over the calibrated range): from the
# calibrated 1 % to about 4 %.
FPR_STEPS = 40
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.slow


def _missing(tool: str, how: str) -> NoReturn:
    message = f"{tool} not found ({how})"
    if os.environ.get("VIGIL_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser, checked before any bundle is trained or server started."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if sync_playwright is None:
        _missing("playwright", 'pip install -e ".[dev]"')
    if path is None:
        _missing("chromium", "apt-get install chromium")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(
    chromium: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The session's VAE bundle with a real training report, written as `vigil evaluate`
    writes one (on a few test images, to stay quick); or $VIGIL_PAGE_BUNDLE as it is."""
    if os.environ.get("VIGIL_PAGE_BUNDLE"):
        return Path(os.environ["VIGIL_PAGE_BUNDLE"]).resolve()
    from vigil.training.data import read_images
    from vigil.training.evaluate import evaluate_bundle
    from vigil.training.evaluate_cli import read_history
    from vigil.training.report import write_bundle_report

    target = tmp_path_factory.mktemp("page") / "tshirts"
    shutil.copytree(request.getfixturevalue("vae_bundle"), target)
    test = read_images("fashion-mnist", "test")
    normals = test.of_class(0).select(np.arange(100))
    anomalies = test.of_class(0, keep=False).select(np.arange(300))
    evaluation = evaluate_bundle(target, normals, anomalies)
    write_bundle_report(target, evaluation, read_history(target), "fashion-mnist")
    return target


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `vigil serve` on a free port; its URL once /readyz answers 200."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_PROVIDERS="CPUExecutionProvider", VIGIL_MAX_BATCH="4")
    env.update(VIGIL_INTRA_OP_THREADS="1")
    command = [
        sys.executable, "-c", "import sys; from vigil.cli import main; sys.exit(main())",
        "serve", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _score(url: str, name: str, data: bytes, target_fpr: float | None = None) -> dict[str, Any]:
    params = {} if target_fpr is None else {"target_fpr": str(target_fpr)}
    response = httpx.post(f"{url}/score", params=params, files={"files": (name, data)}, timeout=30)
    return dict(response.json())


def _cards(page: Page) -> list[dict[str, Any]]:
    return list(
        page.eval_on_selector_all(
            "#grid .card",
            """cards => cards.map(c => ({
                name: c.dataset.filename,
                verdict: c.dataset.verdict,
                score: c.dataset.score === undefined ? null : Number(c.dataset.score),
                threshold: c.querySelector('.primary-threshold')?.textContent ?? null,
                heatmap: c.querySelector('.heatmap img').naturalWidth,
                reconstruction: c.querySelector('.reconstruction img').naturalWidth,
                message: c.querySelector('.error-message').textContent,
                scale: c.querySelector('.scale-title').textContent,
                caption: c.querySelector('.heatmap figcaption').textContent,
                errorShown: !c.querySelector('.card-error').hidden,
            }))""",
        )
    )


def _settled(page: Page, count: int) -> None:
    """Wait until `count` cards are there, none is being scored, every scored card's images
    are decoded, and the grid is in its sort order (it is sorted on the next frame)."""
    page.wait_for_function(
        """count => {
            const cards = [...document.querySelectorAll('#grid .card')];
            const drawn = img => img.complete && img.naturalWidth > 0;
            const scores = cards.filter(c => c.dataset.score).map(c => Number(c.dataset.score));
            return cards.length === count
                && cards.every(c => c.getAttribute('aria-busy') === 'false')
                && cards.every(c => c.dataset.verdict === 'error'
                    || (drawn(c.querySelector('.heatmap img'))
                        && drawn(c.querySelector('.reconstruction img'))))
                && scores.every((s, i) => i === 0 || scores[i - 1] >= s);
        }""",
        arg=count,
        timeout=TIMEOUT_MS,
    )


def _check_against_api(url: str, page: Page, uploads: dict[str, bytes], fpr: float | None) -> None:
    cards = {card["name"]: card for card in _cards(page)}
    for name in (NORMAL, *ANOMALIES):
        (expected,) = _score(url, name, uploads[name], fpr)["results"]
        card = cards[name]
        assert card["verdict"] == ("anomaly" if expected["is_anomaly"] else "normal"), name
        assert card["score"] == expected["score"], name  # the same float, as JSON carries it
        assert card["heatmap"] > 0 and card["reconstruction"] > 0, name
        assert not card["errorShown"], name


def test_the_page_in_a_browser(chromium: str, server: str) -> None:
    assert sync_playwright is not None
    uploads = {name: (DATA / name).read_bytes() for name in (NORMAL, *ANOMALIES)}
    uploads[BAD[0]] = BAD[1]
    bad_answer = _score(server, *BAD)
    assert bad_answer["error"]["code"] == "not_an_image"
    model = httpx.get(f"{server}/model").json()
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda m: (
                    m.type == "error"
                    and "status of 415" not in m.text  # the bad file's answer, expected
                    and problems.append(f"console: {m.text}")
                ),
            )
            page.on(
                "request",
                lambda r: (
                    r.url.startswith((server, "data:", "blob:"))
                    or problems.append(f"request: {r.url}")
                ),
            )
            page.goto(server + "/")
            page.wait_for_selector("#model-name", timeout=TIMEOUT_MS)
            assert page.text_content("#provider") == model["provider"]
            page.wait_for_selector("#report-body .gallery img", timeout=TIMEOUT_MS)

            files = [
                {"name": name, "mimeType": "application/octet-stream", "buffer": data}
                for name, data in uploads.items()
            ]
            page.set_input_files("#file-input", files)
            _settled(page, len(files))
            _check_against_api(server, page, uploads, None)

            cards = _cards(page)
            # The heatmap is named for what it is: the anomaly map of a schema-2 bundle.
            local = "anomaly_map" in model["onnx"]["outputs"]
            for card in cards[:-1]:
                assert card["scale"] == ("anomaly map" if local else "squared error")
                assert card["caption"] == ("Anomaly map" if local else "Error") + " over input"
            (bad,) = [card for card in cards if card["name"] == BAD[0]]
            assert bad["verdict"] == "error" and bad["errorShown"]
            assert bad["message"] == bad_answer["error"]["message"]
            scores = [card["score"] for card in cards if card["score"] is not None]
            assert scores == sorted(scores, reverse=True)  # most anomalous first
            assert cards[-1]["name"] == BAD[0]  # errors last

            before = page.text_content("#primary-threshold")
            assert before == _cards(page)[0]["threshold"]
            page.focus("#fpr")
            for _ in range(FPR_STEPS):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(  # a result at the new rate is in
                """before => {
                    const shown = document.querySelector('#primary-threshold');
                    return shown.dataset.fpr !== '' && shown.textContent !== before;
                }""",
                arg=before,
                timeout=TIMEOUT_MS,
            )
            _settled(page, len(files))
            fpr = float(page.get_attribute("#primary-threshold", "data-fpr") or "nan")
            assert model["target_fpr"] < fpr <= model["target_fpr_range"][1]
            rate = page.text_content("#fpr-value")
            assert f"Of normal images, about {rate} are flagged" in (
                page.text_content("#fpr-meaning") or ""
            )
            _check_against_api(server, page, uploads, fpr)
            (expected,) = _score(server, NORMAL, uploads[NORMAL], fpr)["results"]
            shown = page.text_content("#primary-threshold")
            assert shown != before
            assert float(shown or "nan") == pytest.approx(
                expected["thresholds"][model["primary_score"]], rel=1e-3
            )

            first = page.locator("#grid .card").first
            first.locator("summary").press("Enter")  # every score, its threshold and p-value
            rows = first.locator(".all-scores tbody tr")
            assert rows.count() == len(model["scores"])
            assert first.locator(".all-scores").get_attribute("open") is not None

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.evaluate("document.activeElement.blur()")
            page.mouse.move(0, 0)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Every card's score table fits its card, on laptop screens too (no column cut).
            page.evaluate(
                "document.querySelectorAll('details.all-scores').forEach(d => d.open = true)"
            )
            for width in (1440, 1366, 1024):
                page.set_viewport_size({"width": width, "height": 800})
                overflow = page.eval_on_selector_all(
                    "#grid .table-wrap", "ws => ws.map(w => w.scrollWidth - w.clientWidth)"
                )
                assert max(overflow) <= 0, (width, overflow)
        finally:
            browser.close()
    assert not problems, json.dumps(problems, indent=1)
