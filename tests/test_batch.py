"""`vigil score` on one machine: a row per input, the service's exact scores, clear errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from batch_support import (
    BAD,
    assert_same_as_service,
    fashion,
    image_folder,
    metadata,
    rows,
    score,
    service_answers,
)
from conftest import smooth_noise_frames
from test_data import write_idx
from test_service_support import encode

from vigil.core.score_names import PRIMARY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("workers", ["0", "2"])
async def test_a_folder_scores_exactly_as_the_service_answers(
    vae_bundle: Path, tmp_path: Path, workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path)
    out = tmp_path / "results.parquet"
    assert score(vae_bundle, out, folder, extra=("--workers", workers, "--batch-size", "7")) == 0
    found = rows(out)
    listed = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert sorted(found) == listed  # one row per image file, recursively; readme.txt is not one
    answers, model = await service_answers(vae_bundle, listed)
    for path in listed:
        assert_same_as_service(found[path], answers[path], PRIMARY)
    for name, (code, _) in BAD.items():
        assert found[str(folder / name)]["error"] == code
    assert found[str(folder / "cut.png")]["error"] == "corrupt_image"
    meta = metadata(out)
    assert meta["model"] == model  # the bundle's name, version and sha256, as the service says
    assert meta["target_fpr"] == 0.01 and meta["primary_score"] == PRIMARY
    text = capsys.readouterr().out
    scored = len(listed) - len(BAD) - 1
    assert f"scored {scored} of {len(listed)} images" in text
    assert "errors: 4 (" in text and "not_an_image 1" in text and "corrupt_image 1" in text


@pytest.mark.anyio
async def test_target_fpr_and_an_ae_bundle_match_the_service(
    ae_bundle: Path, tmp_path: Path
) -> None:
    folder = image_folder(tmp_path, count=6)
    out = tmp_path / "ae.parquet"
    assert score(ae_bundle, out, folder, extra=("--workers", "0", "--target-fpr", "0.2")) == 0
    found = rows(out)
    answers, _ = await service_answers(ae_bundle, sorted(found), target_fpr=0.2)
    for path, answer in answers.items():
        assert_same_as_service(found[path], answer, PRIMARY)
    assert "kl" not in pq.read_schema(out).names  # one column per score of this bundle
    assert metadata(out)["target_fpr"] == 0.2


def test_arrays_globs_and_lists_of_paths(vae_bundle: Path, tmp_path: Path) -> None:
    images = fashion(10, start=100)
    np.save(tmp_path / "images.npy", images)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, image in enumerate(images):
        (pngs / f"{i}.png").write_bytes(encode(image))
    listing = tmp_path / "list.txt"
    listing.write_text("# two files and one that is gone\npngs/0.png\n\n" f"{pngs / '1.png'}\nnone.png\n")  # fmt: skip
    out = tmp_path / "mixed.parquet"
    sources = [tmp_path / "images.npy", tmp_path / "t10k-images-idx3-ubyte.gz"]
    assert score(vae_bundle, out, *sources, f"{pngs}/*.png", listing, extra=("--workers", "0")) == 0
    table = pq.read_table(out).to_pylist()
    assert len(table) == 10 + 10 + 10 + 3
    npy, idx, png = table[:10], table[10:20], table[20:30]
    assert [r["path"] for r in npy] == [f"{sources[0]}[{i}]" for i in range(10)]
    # An array image is preprocessed like the same pixels in a file: the same floats.
    for a, b, c in zip(npy, idx, png, strict=True):
        assert a["combined"] == b["combined"] == c["combined"] and a["error"] is None
    assert [r["path"] for r in table[30:]] == [str(pngs / "0.png"), str(pngs / "1.png"), str(tmp_path / "none.png")]  # fmt: skip
    assert [r["error"] for r in table[30:]] == [None, None, "unreadable_file"]


def test_the_progress_bar_moves_with_every_group_scored(
    vae_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only when a row group (65,536 rows) is written: it sat at 0 % until then."""
    from vigil.batch import local

    updates: list[int] = []

    class Bar:
        def __init__(self, **kwargs: object) -> None:
            assert kwargs["total"] == 2_500

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            updates.append(n)

    monkeypatch.setattr(local, "tqdm", Bar)
    np.save(tmp_path / "x.npy", fashion(2_500))
    out = tmp_path / "out.parquet"
    assert score(vae_bundle, out, tmp_path / "x.npy", extra=("--workers", "0")) == 0
    assert updates == [1_024, 1_024, 452]
    assert pq.ParquetFile(out).metadata.num_row_groups == 1  # rows still written in one group
    assert pq.read_table(out).num_rows == 2_500


def test_an_empty_or_missing_input_is_a_clear_error(
    vae_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.parquet"
    assert score(vae_bundle, out, tmp_path / "empty") == 2
    assert "no images found" in capsys.readouterr().err
    assert score(vae_bundle, out, tmp_path / "nothing-here") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert score(vae_bundle, out, f"{tmp_path}/*.png") == 2
    assert "no file matches" in capsys.readouterr().err
    assert score(vae_bundle, out) == 2
    assert "no INPUT given" in capsys.readouterr().err
    assert not out.exists()


def test_a_bundle_that_fails_to_load_stops_before_anything_is_written(
    vae_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path, count=3)
    broken = shutil.copytree(vae_bundle, tmp_path / "broken")
    with (broken / "model.onnx").open("ab") as f:
        f.write(b"\0")
    out = tmp_path / "out.parquet"
    assert score(broken, out, folder) == 2
    assert "sha256" in capsys.readouterr().err
    assert score(tmp_path / "no-bundle", out, folder) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert score(vae_bundle, out, folder, extra=("--target-fpr", "0.0001")) == 2
    assert "target_fpr" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".out.parquet*")) == []


def test_an_existing_result_is_kept_unless_overwrite(vae_bundle: Path, tmp_path: Path) -> None:
    folder = image_folder(tmp_path, count=3)
    out = tmp_path / "out.parquet"
    out.write_text("an earlier result")
    assert score(vae_bundle, out, folder, extra=("--workers", "0")) == 2
    assert out.read_text() == "an earlier result"
    assert score(vae_bundle, out, folder, extra=("--workers", "0", "--overwrite")) == 0
    assert pq.read_table(out).num_rows == len(rows(out))


def test_ray_without_the_extra_says_what_to_install(
    vae_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    import vigil.batch

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    # Imported already (test_batch_ray.py)? Then `from vigil.batch import ray_job` would find
    # the package's attribute without importing: remove both.
    monkeypatch.delitem(sys.modules, "vigil.batch.ray_job", raising=False)
    monkeypatch.delattr(vigil.batch, "ray_job", raising=False)
    folder = image_folder(tmp_path, count=2)
    assert score(vae_bundle, tmp_path / "out", folder, extra=("--ray",)) == 2
    assert "pip install -e '.[ray,cpu]'" in capsys.readouterr().err


def test_without_pyarrow_vigil_score_names_the_batch_extra() -> None:
    code = "import sys; sys.modules['pyarrow'] = None; from vigil.cli import main; sys.exit(main(['score', '--help']))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "needs pyarrow, from the batch extra: pip install -e '.[batch,cpu]'" in done.stderr


def _start(bundle: Path, out: Path, listing: Path) -> subprocess.Popen[str]:
    argv = ["score", "--bundle", str(bundle), "--out", str(out), str(listing), "--workers", "1"]
    code = f"import sys; from vigil.cli import main; sys.exit(main({argv!r}))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _wait_for_partial(out: Path, process: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = list(out.parent.glob(f".{out.name}.partial-*"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no partial file appeared: {process.communicate()}")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_job_leaves_nothing_behind(
    vae_bundle: Path, tmp_path: Path, how: signal.Signals
) -> None:
    png = tmp_path / "one.png"
    png.write_bytes(encode(fashion(1)[0]))
    listing = tmp_path / "many.txt"
    listing.write_text("one.png\n" * 300_000)  # long enough to be stopped midway
    out = tmp_path / "out.parquet"
    process = _start(vae_bundle, out, listing)
    _wait_for_partial(out, process)
    time.sleep(0.5)
    process.send_signal(how)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert sorted(os.listdir(tmp_path)) == ["many.txt", "one.png"]  # no result, no partial file


def test_a_killed_job_never_leaves_a_half_written_result(vae_bundle: Path, tmp_path: Path) -> None:
    png = tmp_path / "one.png"
    png.write_bytes(encode(fashion(1)[0]))
    listing = tmp_path / "many.txt"
    listing.write_text("one.png\n" * 300_000)
    out = tmp_path / "out.parquet"
    process = _start(vae_bundle, out, listing)
    partial = _wait_for_partial(out, process)
    process.kill()  # SIGKILL: no clean-up runs
    process.communicate(timeout=60)  # returns once the decode worker, orphaned, has exited too
    assert not out.exists()  # the result's name only ever holds a complete file
    assert partial.exists()  # what is left: the hidden partial file (README: safe to delete)


def test_vigil_score_needs_no_torch(vae_bundle: Path, tmp_path: Path) -> None:
    """A serving install plus the batch extra scores: nothing on the path imports torch."""
    folder = image_folder(tmp_path, count=2)
    argv = ["score", "--bundle", str(vae_bundle), "--out", str(tmp_path / "o.parquet"),
            str(folder), "--workers", "0", "--no-progress"]  # fmt: skip
    code = f"import sys; sys.modules['torch'] = None; from vigil.cli import main; sys.exit(main({argv!r}))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 2 + 4 + 3


# The session's tiled bundle is trained in the first test that asks for it (~2-4 min).
@pytest.mark.timeout(600)
@pytest.mark.anyio
async def test_a_tiled_bundle_scores_frames_by_their_tiles_as_the_service_does(
    tiled_bundle: Path, tmp_path: Path
) -> None:
    """Large frames: every tile scored, the frame's scores the max over its tiles."""
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    frames = smooth_noise_frames(3, 160, seed=4)
    frames[2, 30:34, 90:94] = 1.0  # a 4-pixel defect
    for i, frame in enumerate(frames):
        Image.fromarray(np.round(frame * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "tiled.parquet"
    assert score(tiled_bundle, out, folder, extra=("--workers", "0")) == 0
    found = rows(out)
    paths = sorted(str(p) for p in folder.iterdir())
    answers, _ = await service_answers(tiled_bundle, paths)
    for path in paths:
        answer = answers[path]
        assert found[path]["is_anomaly"] == answer["is_anomaly"]
        for name, value in answer["scores"].items():
            if value is not None:  # float precision: tiles per ONNX Runtime call differ
                assert found[path][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert found[paths[2]]["is_anomaly"] and not found[paths[0]]["is_anomaly"]
