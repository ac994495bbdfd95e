"""`vigil score --ray` on a real local Ray cluster (127.0.0.1 only, one per module): the same
rows as the local path and as POST /score, bit for bit.

The cluster is started as `vigil score --ray` starts its own (vigil.batch.cli.LOCAL_RAY_ENV)
on a machine whose memory Ray sees as full: its memory monitor's threshold is set at 1 %.
On a shared CI machine another process once held 20 of 24 GB; Ray's monitor then killed
the scoring actors and Ray Data's own actors, and retried them forever: the job hung
until pytest-timeout. With the local cluster's settings, Ray kills nothing for memory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vigil.batch.cli import LOCAL_RAY_ENV

os.environ.update(LOCAL_RAY_ENV)  # read by Ray when it is imported or starts the cluster
import ray
import ray.data
from batch_support import (
    assert_same_as_service,
    fashion,
    image_folder,
    metadata,
    rows,
    score,
    service_answers,
)
from test_service_support import encode

from vigil.core.score_names import PRIMARY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_memory_usage_threshold", "0.01")  # the machine's memory is "full"
        ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    # A job in which nothing moves fails with Ray Data's own message (ExecutionTimeoutError)
    # well before pytest-timeout would stop the test and leave the job running.
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = 150
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


@pytest.mark.timeout(180, func_only=True)
def test_a_worker_that_keeps_dying_fails_the_job_instead_of_hanging(
    vae_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    """An actor whose process dies on every batch (a crash, the kernel's OOM killer) is
    restarted RETRIES times, then the job fails with one line and leaves nothing behind.
    With Ray Data's defaults (restarts and retries forever) it would never end."""
    from vigil.batch import ray_job

    class DyingActor(ray_job.ScoreActor):  # defined here: pickled by value for the workers
        def __call__(self, batch: dict[str, object]) -> object:
            os._exit(1)

    monkeypatch.setattr(ray_job, "ScoreActor", DyingActor)
    folder = image_folder(tmp_path, count=2)
    out = tmp_path / "out"
    assert score(vae_bundle, out, folder, extra=("--ray", "--actors", "1")) == 2
    assert "the Ray job failed: ActorDiedError" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def test_sigterm_stops_a_ray_job_like_ctrl_c(vae_bundle: Path, tmp_path: Path) -> None:
    """`vigil score --ray` on a cluster of its own, stopped midway by SIGTERM (a scheduler):
    exit 130, "interrupted", no partial result left; not Ray's sys.exit(15) and C++ stack."""
    (tmp_path / "one.png").write_bytes(encode(fashion(1)[0]))
    listing = tmp_path / "many.txt"
    listing.write_text("one.png\n" * 200_000)  # long enough to be stopped midway
    out = tmp_path / "out"
    argv = ["score", "--bundle", str(vae_bundle), "--out", str(out), str(listing), "--ray",
            "--actors", "1", "--no-progress"]  # fmt: skip
    code = f"import sys; from vigil.cli import main; sys.exit(main({argv!r}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # vigil's defaults
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while not list(tmp_path.glob(".out.partial-*")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=90)
    finally:
        process.kill()
    assert process.returncode == 130, err[-3000:]
    assert err.rstrip().endswith("interrupted"), err[-3000:]
    assert "SIGTERM received" not in err
    assert sorted(os.listdir(tmp_path)) == ["many.txt", "one.png"]  # no result, no partial
