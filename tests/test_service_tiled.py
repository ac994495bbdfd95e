"""The service scores a tiled bundle's large uploads by their tiles, as `vigil evaluate` does."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_noise_frames
from PIL import Image
from test_service_support import files, make_settings, serving

from vigil.training.calibrate import score_images

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(array * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# The session's tiled bundle is trained in the first test that asks for it (~2-4 min).
@pytest.mark.timeout(600)
async def test_tiled_bundle_served_with_the_same_scores_and_a_full_size_heatmap(
    tiled_bundle: Path,
) -> None:
    frames = smooth_noise_frames(2, 160, seed=9)
    frames[1, 20:24, 120:124] = 1.0
    async with serving(make_settings(tiled_bundle)) as (_, client):
        response = await client.post(
            "/score?heatmap=true", files=files(("a.png", png(frames[0])), ("b.png", png(frames[1])))
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    quantised = (np.round(frames * 255) / 255).astype(np.float32)[:, None]
    expected = score_images(tiled_bundle, quantised)
    for i, result in enumerate(results):
        for name, value in result["scores"].items():
            if value is not None:
                # float precision: the service's session runs on other thread counts
                assert value == pytest.approx(float(expected[name][i]), rel=1e-4, abs=1e-6), name
    assert not results[0]["is_anomaly"] and results[1]["is_anomaly"]
    heatmap = Image.open(io.BytesIO(base64.b64decode(results[1]["heatmap"])))
    assert heatmap.size == (160, 160)
    peak = np.unravel_index(np.asarray(heatmap).argmax(), (160, 160))
    assert abs(peak[0] - 22) <= 8 and abs(peak[1] - 122) <= 8
