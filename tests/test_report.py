"""The HTML/Markdown report: every file written, every plot referenced, metrics.json exact."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from vigil.core.bundle import (
    Calibration,
    InputSpec,
    Manifest,
    ModelInfo,
    OnnxInfo,
    TrainingInfo,
    now,
)
from vigil.training.data import FASHION_MNIST_CLASSES
from vigil.training.evaluate import Evaluation, evaluate_arrays
from vigil.training.export import export_decoder
from vigil.training.models import AutoEncoder, Kind, ModelConfig
from vigil.training.report import plotting, write_report

COMMON = {"training.png", "roc.png", "histograms.png", "examples.png", "latent.png"}
DECODER_PLOTS = {"samples.png", "interpolation.png", "manifold.png"}
DESCRIPTIONS = {
    "reconstruction": "mean squared error",
    "ssim": "1 - SSIM",
    "mahalanobis": "latent Mahalanobis distance",
    "kl": "KL to the prior",
    "combined": "mean standardised log-score",
}


@pytest.fixture(autouse=True)
def low_dpi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Smaller PNGs render faster; what is drawn is the same."""
    monkeypatch.setattr(plotting, "DPI", 40)


def score_names(kind: Kind) -> list[str]:
    base = ["reconstruction", "ssim", "mahalanobis"]
    return [*base, "kl", "combined"] if kind != "ae" else [*base, "combined"]


def raw_scores(rng: np.random.Generator, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Positive scores spanning orders of magnitude, higher for anomalies; `combined` is signed."""
    out = {}
    for name in names:
        shift = rng.normal(0.0, 1.0, len(labels)) + 1.5 * labels
        out[name] = (shift if name == "combined" else np.exp(1.5 * shift) * 1e-3).astype(np.float32)
    return out


def make_manifest(
    kind: Kind, channels: Literal[1, 3], size: int, latent_dim: int, n_cal: int = 200
) -> Manifest:
    rng = np.random.default_rng(1)
    names = score_names(kind)
    cal = raw_scores(rng, np.zeros(n_cal), names)
    return Manifest(
        name="vigil-test",
        version=1,
        created_at=now(),
        model=ModelInfo(
            kind=kind,
            latent_dim=latent_dim,
            beta=None if kind == "ae" else 1.0,
            loss="bce",
            denoise=0.0,
            parameters=12345,
        ),
        input=InputSpec(
            channels=channels, height=size, width=size, color_mode="L" if channels == 1 else "RGB"
        ),
        onnx=OnnxInfo(sha256="0" * 64, opset=18, outputs=[*names, "error_map", "x_hat", "latent"]),
        scores=names,
        primary_score="combined",
        score_descriptions={n: DESCRIPTIONS[n] for n in names},
        calibration=Calibration(
            target_fpr=0.05,
            verdict_scores=["combined"],
            n=n_cal,
            scores={n: sorted(float(v) for v in cal[n]) for n in names},
            data_source="synthetic",
            created_at=now(),
        ),
        training=TrainingInfo(
            data_source="synthetic",
            normal_class=1,
            split_sizes={"train": 1000, "val": 100, "calibration": n_cal},
            epochs=6,
            best_epoch=4,
            seed=0,
            seconds=12.0,
            device="cpu",
            config={},
            versions={},
        ),
    )


def make_evaluation(
    kind: Kind,
    channels: Literal[1, 3] = 1,
    size: int = 28,
    latent_dim: int = 2,
    n: int = 60,
    classes: bool = True,
) -> Evaluation:
    rng = np.random.default_rng(0)
    manifest = make_manifest(kind, channels, size, latent_dim)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    images = rng.random((n, channels, size, size), dtype=np.float32)
    x_hat = np.clip(images + rng.normal(0, 0.1, images.shape), 0, 1).astype(np.float32)
    outputs = raw_scores(rng, labels, manifest.scores)
    outputs["x_hat"] = x_hat
    outputs["error_map"] = ((images - x_hat) ** 2).mean(1, keepdims=True)
    outputs["latent"] = rng.normal(0, 1, (n, latent_dim)).astype(np.float32) + labels[:, None]
    labels_of_class = np.where(labels == 0, 1, rng.choice([0, 2, 3, 5, 7], n)) if classes else None
    return evaluate_arrays(manifest, images, labels, outputs, labels_of_class)


def make_history(kl: bool, epochs: int = 6) -> list[dict[str, float]]:
    rows = []
    for e in range(1, epochs + 1):
        recon = 100.0 / e + 20
        kl_term = 5.0 + e if kl else 0.0
        rows.append(
            {
                "epoch": float(e),
                "loss": recon + kl_term,
                "recon": recon,
                "kl": kl_term,
                "val_loss": recon + kl_term + 3.0 + (e == epochs) * 2,
                "seconds": 1.5,
                "images_per_second": 800.0,
            }
        )
    return rows


def make_decoder(tmp_path: Path, channels: int, size: int, latent_dim: int) -> Path:
    cfg = ModelConfig(
        kind="vae", channels=channels, height=size, width=size, latent_dim=latent_dim, base_width=8
    )
    path = tmp_path / "decoder.onnx"
    export_decoder(AutoEncoder(cfg), path)
    return path


def check_report(out: Path, index: Path, ev: Evaluation, expected: set[str]) -> None:
    assert index == out / "index.html"
    for name in ("index.html", "report.md", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    written = {p.name for p in out.glob("*.png")}
    assert written == expected
    for name in written:
        assert (out / name).stat().st_size > 500, name
    page = index.read_text()
    markdown = (out / "report.md").read_text()
    assert set(re.findall(r'src="([^"]+\.png)"', page)) == written
    assert set(re.findall(r"\]\(([^)]+\.png)\)", markdown)) == written
    assert ev.manifest.primary_score in page
    assert json.loads((out / "metrics.json").read_text()) == _json_safe(ev.summary())


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def test_vae_2d_latent_with_decoder(tmp_path: Path) -> None:
    ev = make_evaluation("vae", latent_dim=2)
    decoder = make_decoder(tmp_path, 1, 28, 2)
    out = tmp_path / "report"
    index = write_report(out, ev, make_history(kl=True), decoder, FASHION_MNIST_CLASSES)
    check_report(out, index, ev, COMMON | DECODER_PLOTS)
    assert "Trouser" in index.read_text()


def test_vae_rgb_5d_latent(tmp_path: Path) -> None:
    ev = make_evaluation("beta-vae", channels=3, size=16, latent_dim=5, classes=False)
    decoder = make_decoder(tmp_path, 3, 16, 5)
    out = tmp_path / "report"
    index = write_report(out, ev, make_history(kl=True), decoder, title="RGB <test>")
    check_report(out, index, ev, COMMON | {"samples.png", "interpolation.png"})
    assert "RGB &lt;test&gt;" in index.read_text()


def test_ae_without_decoder_draws_no_samples(tmp_path: Path) -> None:
    ev = make_evaluation("ae", latent_dim=5)
    out = tmp_path / "report"
    index = write_report(out, ev, make_history(kl=False), None, FASHION_MNIST_CLASSES)
    check_report(out, index, ev, COMMON)


def test_no_history_no_anomalies(tmp_path: Path) -> None:
    """Only normal images (no labelled anomalies): no ROC, no label-based thresholds, valid JSON."""
    full = make_evaluation("vae", latent_dim=3)
    keep = full.labels == 0
    names = full.manifest.scores
    nan = float("nan")
    metrics = {
        n: {**dict.fromkeys(full.metrics[n], nan), "threshold": full.thresholds[n], "fpr": 0.04}
        for n in names
    }
    ev = Evaluation(
        manifest=full.manifest,
        images=full.images[keep],
        labels=full.labels[keep],
        classes=None,
        outputs={k: v[keep] for k, v in full.outputs.items()},
        thresholds=full.thresholds,
        metrics=metrics,
        flags=full.flags[keep],
        verdict={"fpr": 0.04, "tpr": nan},
    )
    out = tmp_path / "report"
    out.mkdir()
    (out / "samples.png").write_bytes(b"stale")  # from an earlier report: must go
    index = write_report(out, ev, None, None)
    check_report(out, index, ev, {"histograms.png", "examples.png", "latent.png"})
    assert json.loads((out / "metrics.json").read_text())["verdict"]["tpr"] is None


def test_broken_decoder_costs_only_its_plots(tmp_path: Path) -> None:
    ev = make_evaluation("vae", latent_dim=2, n=20)
    broken = tmp_path / "decoder.onnx"
    broken.write_bytes(b"not an onnx graph")
    out = tmp_path / "report"
    index = write_report(out, ev, None, broken)
    check_report(out, index, ev, COMMON - {"training.png"})
    assert "Decoder plots skipped" in index.read_text()
