"""`vigil train`, `vigil evaluate` and `vigil calibrate` as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_blobs
from PIL import Image

from vigil.cli import main
from vigil.core.bundle import load_bundle, read_manifest


def test_train_help_documents_every_flag_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in [
        "--latent-dim",
        "--beta",
        "--denoise",
        "--loss",
        "--normal-class",
        "--epochs",
        "--target-fpr",
        "--seed",
    ]:
        assert flag in text
    assert "(default: 16)" in text and "(default: 0.01)" in text


def test_train_on_a_folder_of_rgb_pngs(rgb_bundle: Path) -> None:
    manifest, _ = load_bundle(rgb_bundle)
    assert (manifest.input.channels, manifest.input.height, manifest.input.width) == (3, 32, 32)
    assert manifest.input.color_mode == "RGB" and manifest.model.kind == "vae"
    assert (rgb_bundle / "decoder.onnx").exists()


def test_train_evaluate_calibrate_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    normals = make_blobs(240, size=20, seed=1)
    rng = np.random.default_rng(5)
    anomalies = rng.integers(0, 256, (60, 20, 20), dtype=np.uint8)  # noise is not a blob
    np.save(tmp_path / "normal.npy", normals)
    anomaly_dir = tmp_path / "anomalies"
    anomaly_dir.mkdir()
    for i, a in enumerate(anomalies):
        Image.fromarray(a).save(anomaly_dir / f"noise-{i}.png")
    bundle = tmp_path / "bundle"
    argv = [
        "train",
        "--data",
        str(tmp_path / "normal.npy"),
        "--anomaly-data",
        str(anomaly_dir),
        "--model",
        "ae",
        "--latent-dim",
        "4",
        "--epochs",
        "12",
        "--head-steps",
        "40",
        "--target-fpr",
        "0.05",
        "--out",
        str(bundle),
    ]
    assert main(argv) == 0
    assert (bundle / "report" / "index.html").exists()

    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--data",
                str(tmp_path / "normal.npy"),
                "--anomaly-data",
                str(anomaly_dir),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "AUROC" in table and "verdict at target FPR 0.05" in table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["scores"]["combined"]["auroc"] > 0.9  # noise is easy to tell from blobs

    onnx_before = (bundle / "model.onnx").read_bytes()
    np.save(tmp_path / "new-normals.npy", make_blobs(200, size=20, seed=9))
    assert (
        main(
            [
                "calibrate",
                "--bundle",
                str(bundle),
                "--data",
                str(tmp_path / "new-normals.npy"),
                "--target-fpr",
                "0.1",
            ]
        )
        == 0
    )
    manifest = read_manifest(bundle)
    assert (
        manifest.version == 2
        and manifest.calibration.target_fpr == 0.1
        and manifest.calibration.n == 200
    )
    assert (bundle / "model.onnx").read_bytes() == onnx_before
    assert read_manifest(bundle).onnx.sha256 == manifest.onnx.sha256
    assert (bundle / "manifest.v1.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent", "--out", "x"], "no such file or folder"),
        (
            ["train", "--data", "fashion-mnist", "--normal-class", "42", "--out", "x"],
            "no images of class 42",
        ),
        (["calibrate", "--bundle", "/nonexistent", "--data", "fashion-mnist"], "not a directory"),
        (
            ["train", "--data", "fashion-mnist", "--out", "x", "--verdict", "overall", "defect"],
            "this model computes no score 'defect'",  # 28x28: no local detectors
        ),
        (
            ["train", "--data", "fashion-mnist", "--out", "x", "--head-steps", "0"],
            "--head-steps: must be a positive whole number, not 0",
        ),
    ],
)
def test_bad_input_is_one_clear_line_not_a_traceback(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_too_few_calibration_images_calibrate_for_the_nearest_target_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """50 images: the calibration share rises to 40 % (20 images), which still cannot resolve
    0.01; the bundle is calibrated for the nearest supported target and says so."""
    np.save(tmp_path / "few.npy", make_blobs(50, size=12))
    argv = ["train", "--data", str(tmp_path / "few.npy"), "--out", str(tmp_path / "b"),
            "--epochs", "1", "--head-steps", "10", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "WARNING: target FPR 0.01 is below 0.0476, the smallest that 20 calibration" in out
    manifest = read_manifest(tmp_path / "b")
    assert manifest.calibration.n == 20
    assert manifest.calibration.requested_target_fpr == 0.01
    assert manifest.calibration.target_fpr == pytest.approx(0.0477)
    assert manifest.calibration.note and "0.0477 instead" in manifest.calibration.note


def test_verdict_of_two_scores_splits_the_target_between_them(tmp_path: Path) -> None:
    """--verdict overall spectrum: either flags an image, each at half the target FPR, and
    the calibration split grows until it resolves the halves (2 / (n + 1) <= 0.01)."""
    from vigil.core.calibration import threshold
    from vigil.core.verdicts import Judge

    np.save(tmp_path / "n.npy", make_blobs(600, size=12))
    argv = ["train", "--data", str(tmp_path / "n.npy"), "--out", str(tmp_path / "b"),
            "--epochs", "1", "--no-report", "--verdict", "overall", "spectrum"]  # fmt: skip
    assert main(argv) == 0
    manifest, _ = load_bundle(tmp_path / "b")
    calibration = manifest.calibration
    assert calibration.verdict_scores == ["overall", "spectrum"]
    assert calibration.n >= 199 and calibration.target_fpr == 0.01 and calibration.note is None
    judge = Judge(manifest)
    limits = judge.thresholds()
    for name in ("overall", "spectrum"):
        assert limits[name] == threshold(np.array(calibration.scores[name]), 0.005)
    raw = {name: np.full(2, -1e9) for name in calibration.scores}
    raw["spectrum"] = np.array([limits["spectrum"] + 1.0, limits["spectrum"]])
    assert judge.flags(raw).tolist() == [True, False]  # the camera check alone flags


def test_calibrate_can_change_the_verdict_and_refuses_unknown_scores(
    vae_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vigil calibrate --verdict overall spectrum` adds the camera check to an existing
    bundle's verdict (no retraining); a score the bundle lacks is one line, not a traceback."""
    out = tmp_path / "two"
    argv = ["calibrate", "--bundle", str(vae_bundle), "--data", "fashion-mnist",
            "--normal-class", "0", "--target-fpr", "0.02", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--verdict", "overall", "spectrum"]) == 0
    assert "verdict overall or spectrum" in capsys.readouterr().out
    calibration = read_manifest(out).calibration
    assert calibration.verdict_scores == ["overall", "spectrum"]
    assert read_manifest(vae_bundle).calibration.verdict_scores == ["overall"]  # untouched
    assert main([*argv, "--verdict", "overall", "defect"]) == 2
    err = capsys.readouterr().err
    assert "this model computes no score 'defect'" in err and "Traceback" not in err


def test_evaluate_all_classes_prints_the_table_with_the_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", "fashion-mnist", "--all-classes", "--classes", "1", "7",
            "--epochs", "1", "--head-steps", "10", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "all-classes.json").read_text())
    assert [row["class"] for row in summary["classes"]] == [1, 7]
    primary = summary["classes"][0]["primary_score"]
    mean = (summary["classes"][0]["auroc"][primary] + summary["classes"][1]["auroc"][primary]) / 2
    assert summary["mean_auroc"][primary] == pytest.approx(mean)
    table = capsys.readouterr().out
    assert any(line.startswith("mean") for line in table.splitlines())
    assert (out / "class-1" / "manifest.json").exists() and (
        out / "class-7" / "manifest.json"
    ).exists()


def test_default_epochs_scale_with_the_data_set_size() -> None:
    from vigil.training.config import TrainConfig

    cfg = TrainConfig(data="x", out=Path("x"))
    assert cfg.max_epochs(4200, 28 * 28) == 30  # Fashion-MNIST class: 66 steps an epoch
    assert cfg.max_epochs(3000, 28 * 28) == 39  # 47 steps an epoch: at least 1800 steps
    assert cfg.max_epochs(640, 28 * 28) == 180  # 10 steps an epoch
    assert cfg.max_epochs(20, 28 * 28) == 300  # capped
    assert TrainConfig(data="x", out=Path("x"), epochs=3).max_epochs(20, 28 * 28) == 3


def test_the_step_floor_stops_where_large_images_would_overrun_the_time_budget() -> None:
    from vigil.training.config import FLOOR_PIXELS, TrainConfig

    cfg = TrainConfig(data="x", out=Path("x"))
    assert cfg.max_epochs(2100, 64 * 64) == 30  # 33 steps an epoch wanted 55
    assert cfg.max_epochs(700, 64 * 64) == FLOOR_PIXELS // (700 * 64 * 64)  # 69, not 164
    assert cfg.max_epochs(4000, 64 * 64) == 30  # never below the default


def test_training_commands_without_torch_say_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from vigil.cli import main\n"
        "sys.exit(main(['train', '--data', 'fashion-mnist', '--out', 'unused']))"
    )
    root = str(Path(__file__).parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60
    )
    assert proc.returncode == 2
    assert (
        "needs torch" in proc.stderr and "[train" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_serve_refuses_a_missing_or_broken_bundle_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--bundle", str(tmp_path / "empty")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
