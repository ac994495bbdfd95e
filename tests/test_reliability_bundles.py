"""`vigil train` and `vigil calibrate` interrupted or failing leave the complete new bundle or
the old one, never a half-written folder the service would load (`core.publish`)."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_blobs

import vigil.core.publish as publish
import vigil.training.bundle
import vigil.training.pipeline
from vigil.core.bundle import MANIFEST_FILE, load_bundle, read_manifest
from vigil.core.publish import NotReplaceable, staged
from vigil.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if publish.PARTIAL in p.name]


def write_files(folder: Path, **content: str) -> None:
    for name, text in content.items():
        (folder / name).write_text(text)


# ------------------------------------------------------------------ core.publish alone


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_staged_replaces_the_whole_folder_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    out = tmp_path / "bundle"
    with staged(out, MANIFEST_FILE) as folder:
        write_files(folder, **{MANIFEST_FILE: "v1", "model.onnx": "one", "old-only": "x"})
        assert not out.exists()  # nothing at `out` until the block ends
    assert files_of(out) == {MANIFEST_FILE: b"v1", "model.onnx": b"one", "old-only": b"x"}
    with staged(out, MANIFEST_FILE) as folder:
        write_files(folder, **{MANIFEST_FILE: "v2", "model.onnx": "two"})
        assert files_of(out)[MANIFEST_FILE] == b"v1"  # the old one, whole, meanwhile
    assert files_of(out) == {MANIFEST_FILE: b"v2", "model.onnx": b"two"}
    assert leftovers(out) == []
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~publish._umask())


@pytest.mark.parametrize("fault", ["disk full", "Ctrl-C", "SIGTERM"])
def test_a_failure_or_interruption_while_staging_leaves_the_old_folder(
    tmp_path: Path, fault: str
) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    write_files(out, **{MANIFEST_FILE: "old", "model.onnx": "old"})
    before = files_of(out)
    handler = signal.getsignal(signal.SIGTERM)  # whatever earlier tests (Ray) left there
    expected = OSError if fault == "disk full" else KeyboardInterrupt
    with pytest.raises(expected), staged(out, MANIFEST_FILE) as folder:
        write_files(folder, **{MANIFEST_FILE: "new"})
        if fault == "disk full":
            raise OSError(errno.ENOSPC, "No space left on device")
        if fault == "Ctrl-C":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # raises KeyboardInterrupt here
        time.sleep(5)
    assert files_of(out) == before and leftovers(out) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


def test_a_folder_that_is_not_a_bundle_is_never_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(NotReplaceable, match="refusing"), staged(home, MANIFEST_FILE):
        pass
    with pytest.raises(NotReplaceable):
        vigil.training.pipeline.run(TrainConfig(data="fashion-mnist", out=home))
    assert (home / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    with staged(tmp_path / "empty", MANIFEST_FILE) as folder:  # an empty folder is fine
        write_files(folder, **{MANIFEST_FILE: "v1"})
    assert leftovers(home) == []


# ---------------------------------------------------------- vigil train / calibrate


@pytest.fixture
def old_bundle(ae_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ae_bundle, tmp_path / "models" / "parts"))


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=make_blobs(300, seed=3))
    return path


def assert_old_or_complete_new(out: Path, old: dict[str, bytes], report: bool) -> str:
    """Which bundle `out` holds; fails unless it is the old one or a complete new one."""
    assert leftovers(out) == []
    now = files_of(out)
    if now == old:
        return "old"
    manifest, _ = load_bundle(out)  # loads: manifest valid, graph there, checksum right
    assert manifest.evaluation, "a new bundle is published with its evaluation"
    assert (out / "history.json").is_file()
    assert (out / "report" / "index.html").is_file() == report
    assert not any(name.startswith("manifest.v") for name in now), "nothing of the old mixed in"
    return "new"


@pytest.mark.parametrize("step", ["export_decoder", "write_bundle_report"])
def test_train_failing_midway_keeps_the_old_bundle(
    old_bundle: Path, blobs: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The disk fills up while the graphs, or later the report, are written."""

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    module = vigil.training.bundle if step == "export_decoder" else vigil.training.pipeline
    monkeypatch.setattr(module, step, full)
    old = files_of(old_bundle)
    config = TrainConfig(data=str(blobs), out=old_bundle, epochs=1, progress=False)
    with pytest.raises(OSError, match="No space"):
        vigil.training.pipeline.run(config)
    assert assert_old_or_complete_new(old_bundle, old, report=True) == "old"


def vigil_command(*args: str, limit_bytes: int | None = None) -> subprocess.Popen[str]:
    def limit() -> None:  # a disk that fills up: writes past the size fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit,
    )


def wait_for_staging(process: subprocess.Popen[str], out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not leftovers(out):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.005)


@pytest.mark.slow
def test_train_interrupted_while_writing_the_bundle(old_bundle: Path, blobs: Path) -> None:
    """SIGTERM, as a scheduler sends (Ctrl-C takes the same path: the staging tests above)."""
    old = files_of(old_bundle)
    process = vigil_command(
        "train", "--data", str(blobs), "--model", "ae", "--epochs", "2", "--out", str(old_bundle)
    )
    wait_for_staging(process, old_bundle)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    if process.returncode == 0:  # the signal came just after the publish
        assert assert_old_or_complete_new(old_bundle, old, report=True) == "new"
    else:
        assert process.returncode == 130, output
        assert "interrupted" in output and "Traceback" not in output
        # before the publish: the old bundle; during the clean-up after it: the new one
        assert assert_old_or_complete_new(old_bundle, old, report=True) in ("old", "new")


@pytest.mark.slow
def test_train_on_a_full_disk_keeps_the_old_bundle(old_bundle: Path, blobs: Path) -> None:
    old = files_of(old_bundle)
    process = vigil_command(
        "train", "--data", str(blobs), "--model", "ae", "--epochs", "1", "--no-report",
        "--out", str(old_bundle), limit_bytes=20_000,
    )  # fmt: skip
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 2, output
    assert "vigil train: error:" in output and "File too large" in output, output
    assert "Traceback" not in output
    assert assert_old_or_complete_new(old_bundle, old, report=False) == "old"


@pytest.mark.slow
def test_calibrate_to_a_new_folder_interrupted(old_bundle: Path, blobs: Path) -> None:
    target = old_bundle.parent / "recalibrated"
    process = vigil_command(
        "calibrate", "--bundle", str(old_bundle), "--data", str(blobs), "--out", str(target)
    )
    wait_for_staging(process, target)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert leftovers(target) == []
    if process.returncode == 0:
        assert read_manifest(target).version == read_manifest(old_bundle).version + 1
        load_bundle(target)
    else:
        assert process.returncode == 130 and not target.exists()


def test_calibrate_in_place_swaps_only_the_manifest(old_bundle: Path, blobs: Path) -> None:
    from vigil.cli import main

    graph = (old_bundle / "model.onnx").read_bytes()
    version = read_manifest(old_bundle).version
    assert main(["calibrate", "--bundle", str(old_bundle), "--data", str(blobs)]) == 0
    assert read_manifest(old_bundle).version == version + 1
    assert (old_bundle / f"manifest.v{version}.json").is_file()
    assert (old_bundle / "model.onnx").read_bytes() == graph
    assert not list(old_bundle.glob("*.tmp"))


def test_a_service_load_during_a_publish_reads_one_version(
    ae_bundle: Path, vae_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish swaps the folder between the service's read of the manifest and of the
    graph: both still come from the version the manifest was read from."""
    import vigil.core.bundle as bundle

    out = Path(shutil.copytree(ae_bundle, tmp_path / "models" / "x"))
    staging = Path(shutil.copytree(vae_bundle, tmp_path / "models" / f".x{publish.PARTIAL}1"))
    old = read_manifest(out)
    real = bundle._read_in

    def publish_right_after_the_manifest(folder: int, name: str, where: Path) -> bytes:
        data = real(folder, name, where)
        if name == MANIFEST_FILE:
            publish.publish(staging, out)  # vigil train finishing now
        return data

    monkeypatch.setattr(bundle, "_read_in", publish_right_after_the_manifest)
    manifest, graph = bundle.read_bundle(out)
    assert manifest == old and hashlib.sha256(graph).hexdigest() == old.onnx.sha256
    assert read_manifest(out).name == read_manifest(vae_bundle).name  # the publish happened
