"""Fuzzing, short forms: schemathesis from the running service's OpenAPI document, atheris on
the decode path, and the replay of every input that ever found a bug (tests/data/fuzz/).

The full forms: `python -m benchmarks.reliability --full` (RELIABILITY.md).
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_service_support import files, make_settings, serving

from benchmarks.reliability.image_contract import CORPUS, check, forked, fuzzer_command, seeds
from benchmarks.reliability.schema_fuzz import schema_fuzz
from vigil.core.bundle import InputSpec
from vigil.core.preprocess import load_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.slow
def test_schema_fuzzing_finds_nothing(vae_bundle: Path, tmp_path: Path) -> None:
    seen = schema_fuzz(vae_bundle, tmp_path, max_examples=10, max_time_s=40)
    assert seen["failures"] == [] and seen["errors"] == [], seen["output"]
    assert seen["exit_code"] == 0, seen["output"]
    assert seen["operations"]["tested"] == seen["operations"]["total"] == 6
    assert seen["answers_5xx"] == 0 and not seen["server_traceback"]
    answers = seen["answers"]
    assert answers.get("POST /score 200", 0) > 0  # real images were scored, not only refused
    assert any(k.startswith("POST /admin/reload 2") for k in answers)  # past authentication


def test_the_fuzzer_does_not_inherit_this_process_peak_memory() -> None:
    # libFuzzer's -rss_limit_mb reads ru_maxrss, which a direct child inherits from its parent
    ballast = np.ones(512 * 2**20, np.uint8)  # this process's peak: at least 512 MiB
    code = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    command = [sys.executable, "-c", code]
    direct = int(subprocess.run(command, capture_output=True, text=True).stdout)
    via_shell = int(subprocess.run(forked(command), capture_output=True, text=True).stdout)
    del ballast
    assert direct > 512 * 1024 > 4 * via_shell  # KiB


@pytest.mark.slow
def test_image_fuzzing_finds_nothing(tmp_path: Path) -> None:
    seeds(tmp_path / "seeds")
    (tmp_path / "corpus").mkdir()
    done = subprocess.run(
        fuzzer_command("-max_total_time=20", "-timeout=10", "-rss_limit_mb=1024",
                       f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus"),
                       str(tmp_path / "seeds"), str(CORPUS)),
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done" in done.stderr and "cov:" in done.stderr
    assert not list(tmp_path.glob("crash-*")) + list(tmp_path.glob("oom-*")) + list(tmp_path.glob("timeout-*"))  # fmt: skip


def test_nan_infinite_and_negative_pixels_of_a_float_image_count_as_zero() -> None:
    """Seen while fuzzing: they were cast to uint8 unchecked (NaN to anything, -x wrapped)."""
    values = np.array([[np.nan, np.inf, -np.inf, -3.0], [0.0, 1.0, 2.0, 4.0]], np.float32)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="TIFF")
    spec = InputSpec(channels=1, height=2, width=4, color_mode="L")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        array = load_image(buffer.getvalue(), spec, 100)
    expected = np.round(np.array([[0, 0, 0, 0], [0, 1, 2, 4]]) / 4 * 255) / 255
    np.testing.assert_allclose(array[0], expected, atol=1e-6)


def test_the_seed_images_decode_or_are_refused_as_documented(tmp_path: Path) -> None:
    for path in seeds(tmp_path):
        check(path.read_bytes())


FOUND = sorted(p for p in CORPUS.iterdir() if p.name != "README.md")


# Checked in a fresh process, whose peak memory is then known: one finding was an input
# that made the decoder allocate 1 GiB (the RSS limit caught it, not an exception). The
# peak is VmHWM, that of the process's own memory since its exec; not getrusage's
# ru_maxrss, which Linux carries over from the parent across fork and exec (the pytest
# process, past 700 MiB once a fixture has trained a model, failed this test).
REPLAY = """
import re, sys
from pathlib import Path
from benchmarks.reliability.image_contract import check
check(open(sys.argv[1], "rb").read())
print(int(re.search(r"VmHWM:\\s*(\\d+) kB", Path("/proc/self/status").read_text())[1]) // 1024)
"""
MAX_RSS_MIB = 400  # the interpreter, numpy, Pillow and ONNX-free Vigil take ~100


@pytest.mark.parametrize("path", FOUND, ids=lambda p: p.name)
def test_inputs_that_once_found_a_bug_stay_fixed(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", REPLAY, str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) < MAX_RSS_MIB, f"peak RSS {done.stdout.split()[-1]} MiB"


@pytest.mark.anyio
async def test_the_service_answers_them_as_documented(vae_bundle: Path) -> None:
    async with serving(make_settings(vae_bundle, max_batch=2)) as (_, client):
        for path in FOUND:
            answer = await client.post("/score", files=files((path.name, path.read_bytes())))
            assert answer.status_code < 500, (path.name, answer.text)
            if answer.status_code != 200:
                assert answer.json()["error"]["filename"] == path.name
