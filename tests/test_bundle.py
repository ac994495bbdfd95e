import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vigil.core.bundle import BundleError, Manifest, load_bundle, read_manifest, write_manifest
from vigil.core.runtime import create_session, run
from vigil.core.verdicts import Judge


@pytest.fixture
def bundle(ae_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ae_bundle, tmp_path / "bundle"))


def test_manifest_round_trip(bundle: Path, tmp_path: Path) -> None:
    manifest = read_manifest(bundle)
    out = tmp_path / "copy"
    out.mkdir()
    write_manifest(out, manifest)
    assert read_manifest(out) == manifest
    assert Manifest.model_validate_json((out / "manifest.json").read_text()) == manifest


def test_manifest_contents(vae_bundle: Path) -> None:
    m, _ = load_bundle(vae_bundle)
    assert (
        m.model.kind == "vae"
        and m.input.channels == 1
        and (m.input.height, m.input.width) == (28, 28)
    )
    assert m.primary_score in m.scores and "kl" in m.scores
    assert m.training.normal_class == 0 and m.training.split_sizes["calibration"] == m.calibration.n
    assert m.training.versions["torch"].startswith("2.13")
    assert (
        m.calibration.target_fpr == 0.01 and m.evaluation["scores"][m.primary_score]["auroc"] > 0.5
    )
    assert "scores" not in m.public()["calibration"]


def _edit(bundle: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: _edit(b, lambda d: d.update(schema_version=99)), "schema_version 99"),
        (lambda b: (b / "manifest.json").unlink(), "no manifest.json"),
        (lambda b: (b / "model.onnx").unlink(), "no model.onnx"),
        (lambda b: (b / "model.onnx").write_bytes(b"tampered"), "sha256"),
        (lambda b: (b / "manifest.json").write_text("{not json"), "not readable JSON"),
        (lambda b: _edit(b, lambda d: d.update(primary_score="nope")), "primary score"),
        (lambda b: _edit(b, lambda d: d["calibration"]["scores"]["ssim"].reverse()), "not sorted"),
        (lambda b: _edit(b, lambda d: d["input"].update(channels=3)), "color_mode L does not fit"),
        (lambda b: _edit(b, lambda d: d.pop("onnx")), "onnx"),
    ],
)
def test_every_load_failure_is_a_clear_bundle_error(bundle: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")


def test_onnx_graph_is_valid_with_opset_at_least_17(vae_bundle: Path) -> None:
    model = onnx.load(str(vae_bundle / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert len(model.graph.initializer) > 0 and not any(
        t.data_location for t in model.graph.initializer
    )


@pytest.mark.parametrize("batch", [1, 64])
def test_onnx_runtime_matches_torch_eager(batch: int, tmp_path: Path) -> None:
    from vigil.training.export import export_onnx
    from vigil.training.models import AutoEncoder, ModelConfig
    from vigil.training.scores import ScoreGraph

    torch.manual_seed(0)
    model = AutoEncoder(ModelConfig(kind="vae", latent_dim=8)).eval()
    graph = ScoreGraph(model)
    x = torch.rand(batch, 1, 28, 28)
    with torch.no_grad():
        graph.fit_latent_density(torch.randn(200, 8))
        graph.fit_standardisation(torch.rand(32, 1, 28, 28))
        eager = graph(x)
    path = tmp_path / "model.onnx"
    names = export_onnx(graph, path)
    onnx_out = run(create_session(path, ["CPUExecutionProvider"]), x.numpy())
    assert set(names) == set(eager)
    for name in names:
        np.testing.assert_allclose(
            onnx_out[name], eager[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name
        )


@pytest.mark.parametrize(
    "cfg",
    [{"kind": "vae"}, {"kind": "ae", "channels": 3, "height": 27, "width": 27, "latent_dim": 10}],
    ids=["vae-28x28-L", "ae-27x27-RGB-latent10"],
)
def test_exported_scores_do_not_depend_on_the_batch(cfg: dict[str, object], tmp_path: Path) -> None:
    """Bit for bit: an image's scores alone equal its scores at any position in any batch."""
    from vigil.training.export import export_onnx
    from vigil.training.models import AutoEncoder, ModelConfig
    from vigil.training.scores import ScoreGraph

    torch.manual_seed(0)
    config = ModelConfig(**cfg)  # type: ignore[arg-type]
    graph = ScoreGraph(AutoEncoder(config).eval())
    shape = (config.channels, config.height, config.width)
    with torch.no_grad():
        graph.fit_latent_density(torch.randn(300, config.latent_dim))
        graph.fit_standardisation(torch.rand(32, *shape))
    names = export_onnx(graph, tmp_path / "model.onnx")
    session = create_session(tmp_path / "model.onnx", ["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((13, *shape), dtype=np.float32)
    alone = [run(session, x[i : i + 1], names) for i in range(len(x))]
    for start, stop in [(0, 13), (0, 5), (3, 13), (6, 8)]:
        batch = run(session, x[start:stop], names)
        for i in range(start, stop):
            for name in names:
                assert np.array_equal(batch[name][i - start], alone[i][name][0]), (name, i)


def test_judge_verdicts_follow_thresholds_and_p_values(vae_bundle: Path) -> None:
    manifest, model_path = load_bundle(vae_bundle)
    judge = Judge(manifest)
    cal = judge.calibration[manifest.primary_score]
    raw = {
        name: np.array([judge.calibration[name][0], judge.calibration[name][-1] * 10])
        for name in manifest.scores
    }
    normal, anomalous = judge.judge(raw)
    assert not normal.is_anomaly and anomalous.is_anomaly
    assert anomalous.flagged_by == [manifest.primary_score]
    assert anomalous.p_values[manifest.primary_score] == pytest.approx(1 / (len(cal) + 1))
    assert normal.p_values[manifest.primary_score] == 1.0
    loose = judge.thresholds(0.2)[manifest.primary_score]
    assert loose < judge.thresholds()[manifest.primary_score]
    assert model_path.name == "model.onnx"


def test_a_written_bundle_is_readable_by_other_users(ae_bundle: Path) -> None:
    """A container's service user (not the trainer) must read a mounted bundle."""
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(ae_bundle.stat().st_mode) == 0o777 & ~mask
    for path in ae_bundle.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o444 == 0o444 & ~mask, path
