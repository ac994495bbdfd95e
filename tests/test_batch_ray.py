"""`vigil score --ray` on a real local Ray cluster (127.0.0.1 only, one per module): the same
rows as the local path and as POST /score, bit for bit."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

# Read by Ray when it is imported: bind the head to 127.0.0.1, send no usage statistics.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from batch_support import (
    assert_same_as_service,
    image_folder,
    metadata,
    rows,
    score,
    service_answers,
)

from vigil.core.score_names import PRIMARY


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_ray_rows_equal_the_local_rows_and_the_service(
    vae_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path, count=20)
    listing = tmp_path / "list.txt"
    listing.write_text("images/001.png\nimages/gone.png\n")
    on_ray, local = tmp_path / "ray.parquet", tmp_path / "local.parquet"
    ray_args = ("--ray", "--actors", "2", "--batch-size", "8")
    assert score(vae_bundle, on_ray, folder, listing, extra=ray_args) == 0
    assert on_ray.is_dir() and list(tmp_path.glob(".ray.parquet*")) == []
    assert score(vae_bundle, local, folder, listing, extra=("--workers", "0")) == 0
    table = sorted(pq.read_table(on_ray).to_pylist(), key=lambda row: row["path"])
    assert table == sorted(pq.read_table(local).to_pylist(), key=lambda row: row["path"])
    assert len(table) == 27 + 2  # 001.png twice: in the folder and in the list
    found = rows(on_ray)
    assert found[str(tmp_path / "images" / "gone.png")]["error"] == "unreadable_file"
    answers, model = await service_answers(vae_bundle, [p for p in found if "gone" not in p])
    for path, answer in answers.items():
        assert_same_as_service(found[path], answer, PRIMARY)
    assert metadata(on_ray)["model"] == model
    assert "errors: 5 (" in capsys.readouterr().out  # 4 bad files and the one that is gone


def test_ray_refuses_arrays_and_an_existing_result(
    vae_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.npy").write_bytes(b"")
    assert score(vae_bundle, tmp_path / "out", tmp_path / "x.npy", extra=("--ray",)) == 2
    assert "score IDX and .npy/.npz inputs without --ray" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    folder = image_folder(tmp_path, count=1)
    assert score(vae_bundle, tmp_path / "out", folder, extra=("--ray",)) == 2
    assert "pass --overwrite" in capsys.readouterr().err
