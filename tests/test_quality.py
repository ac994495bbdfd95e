"""Issue 14: tiling, local maps, calibration of small sets, schema 2."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vigil.core import tiling
from vigil.core.bundle import READABLE_VERSIONS, BundleError, read_manifest
from vigil.core.runtime import create_session, run

# ---------------------------------------------------------------- tiling (pure functions)


@pytest.mark.parametrize(("size", "tile", "stride"), [(64, 64, 32), (100, 64, 32), (1024, 64, 32),
                                                      (70, 16, 16), (10, 16, 8)])  # fmt: skip
def test_tile_positions_cover_every_pixel_and_stay_inside(
    size: int, tile: int, stride: int
) -> None:
    starts = tiling.positions(size, tile, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    covered = np.zeros(size, bool)
    for s in starts:
        assert s + min(tile, size) <= size
        covered[s : s + tile] = True
    assert covered.all()
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


def test_1024_frame_has_961_tiles_of_64_at_stride_32() -> None:
    assert tiling.count(1024, 1024, (64, 64), (32, 32)) == 31 * 31


def test_cut_then_stitch_gives_the_image_back() -> None:
    image = np.random.default_rng(0).random((3, 100, 77), dtype=np.float32)
    tiles = tiling.cut(image, (32, 32), (20, 20))
    assert tiles.shape[1:] == (3, 32, 32)
    assert np.array_equal(tiling.stitch(tiles, 100, 77, (32, 32), (20, 20)), image)


def test_stitch_takes_the_max_over_overlapping_tiles() -> None:
    maps = np.zeros((4, 1, 4, 4), np.float32)  # a 6x6 image, 4x4 tiles, stride 2
    maps[0, 0, 3, 3] = 5.0  # tile (0, 0), pixel (3, 3): also covered by the other three
    out = tiling.stitch(maps, 6, 6, (4, 4), (2, 2))
    assert out[0, 3, 3] == 5.0 and out.sum() == 5.0


def test_tile_max_per_image() -> None:
    values = np.array([1.0, 5.0, 2.0, 0.5, 7.0, 3.0])
    assert tiling.tile_max(values, [2, 1, 3]).tolist() == [5.0, 2.0, 7.0]
    with pytest.raises(ValueError):
        tiling.tile_max(values, [2, 2])


def test_score_tiled_scores_an_image_by_its_worst_tile_in_one_call() -> None:
    """A small bright defect decides the image score, and the map shows where it is."""
    calls = []

    def runner(tiles: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(tiles))
        return {"score": tiles.reshape(len(tiles), -1).max(1), "map": tiles}

    clean = np.zeros((1, 128, 96), np.float32)
    defect = clean.copy()
    defect[0, 70:73, 40:43] = 1.0
    scores, maps = tiling.score_tiled(runner, [clean, defect], (32, 32), (16, 16), ["score"],
                                      ["map"])  # fmt: skip
    assert calls == [2 * tiling.count(128, 96, (32, 32), (16, 16))]  # every tile, one call
    assert scores["score"].tolist() == [0.0, 1.0]
    assert np.array_equal(maps["map"][1], defect) and maps["map"][0].shape == (1, 128, 96)


# ---------------------------------------------------------------- calibration of small sets


def test_calibration_share_rises_for_small_sets_until_the_target_is_supported() -> None:
    from vigil.core.calibration import min_fpr
    from vigil.training.config import TrainConfig
    from vigil.training.data import split_indices

    cfg = TrainConfig(data="x", out=Path("x"))
    assert cfg.calibration_fraction(1000) == 0.2
    splits = split_indices(300, 0, 0.1, cfg.calibration_fraction(300))
    assert len(splits.cal) == 99 and min_fpr(99) <= 0.01  # 300 images now support 1 %
    assert cfg.calibration_fraction(100) == 0.4  # capped: training needs images too
    assert TrainConfig(data="x", out=Path("x"), cal_fraction=0.1).calibration_fraction(300) == 0.1


def test_calibration_share_rises_for_large_sets_toward_a_precise_threshold() -> None:
    """Large sets calibrate on up to 25 / target images a verdict score (the realised FPR's
    sd from calibration about a fifth of the target), as far as training keeps 3,000."""
    from vigil.training.config import MIN_TRAIN_IMAGES, TrainConfig
    from vigil.training.data import split_indices

    cfg = TrainConfig(data="x", out=Path("x"))

    def sizes(n: int, config: TrainConfig = cfg) -> tuple[int, int]:
        splits = split_indices(n, 0, config.val_fraction, config.calibration_fraction(n))
        return len(splits.train), len(splits.cal)

    assert sizes(6000) == (MIN_TRAIN_IMAGES, 2400)  # Fashion-MNIST: 2,400, not 1,200
    assert sizes(4000) == (2800, 800)  # no spare images: the usual 20 %
    assert sizes(10000)[1] == 2500  # all it needs
    assert sizes(20000)[1] == 4000  # 20 % is already more
    assert sizes(6000, replace(cfg, target_fpr=0.05)) == (4200, 1200)  # 500 suffice


def test_nearest_supported_target_is_supported_and_explained() -> None:
    from vigil.core.calibration import check_fpr, supported_target, threshold

    assert supported_target(0.01, 1200) == (0.01, None)
    target, note = supported_target(0.01, 60)
    assert target == 0.0164 and note is not None and "60 calibration images" in note
    check_fpr(target, 60)
    assert threshold(np.arange(60.0), target) == 59.0  # flag above the largest


# ---------------------------------------------------------------- the local maps


def _graph(shape: tuple[int, int, int], seed: int = 0):  # type: ignore[no-untyped-def]
    from vigil.training.models import AutoEncoder, ModelConfig
    from vigil.training.pipeline import fit_statistics
    from vigil.training.scores import ScoreGraph

    torch.manual_seed(seed)
    c, h, w = shape
    graph = ScoreGraph(AutoEncoder(ModelConfig(channels=c, height=h, width=w)).eval())
    assert graph.head is not None
    # These tests are about the local maps: an untrained defect head would add noise to the
    # anomaly map, so its logits are made constant (tests/test_defects.py trains one).
    torch.nn.init.zeros_(graph.head.out.weight)
    rng = np.random.default_rng(seed)
    # a stationary "texture": smoothed noise
    base = torch.from_numpy(rng.random((160, c, h + 4, w + 4), dtype=np.float32))
    x = torch.nn.functional.avg_pool2d(base, 5, 1)
    return fit_statistics(graph, x[:120], x[120:]), x


def test_local_score_sees_a_small_defect_and_a_missing_patch_that_means_miss() -> None:
    graph, x = _graph((1, 32, 32))
    normal = x[120:]
    bright, flat = normal.clone(), normal.clone()
    bright[:, :, 10:13, 10:13] = 1.0  # 9 of 1024 pixels
    flat[:, :, 8:16, 8:16] = normal[:, :, 8:16, 8:16].mean()  # detail removed
    with torch.no_grad():
        s = {name: graph(t) for name, t in (("normal", normal), ("bright", bright), ("flat", flat))}
    assert (s["bright"]["local"] > s["normal"]["local"].max()).float().mean() > 0.9
    # the same images with detail removed score higher (the image-wide mean error drops)
    assert (s["flat"]["local"] > s["normal"]["local"]).float().mean() > 0.9
    assert (s["flat"]["reconstruction"] < s["normal"]["reconstruction"]).float().mean() > 0.5
    for kind in ("bright", "flat"):
        where = s[kind]["anomaly_map"][:, 0]
        peak = where.flatten(1).argmax(1)
        rows, cols = peak // 32, peak % 32
        assert ((rows - 12).abs() <= 6).float().mean() > 0.9 and ((cols - 12).abs() <= 6).all()


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 30, 30)], ids=["64x64-L", "30x30-RGB"])
def test_fitted_local_maps_do_not_depend_on_the_batch(
    shape: tuple[int, int, int], tmp_path: Path
) -> None:
    """Bit for bit, with fitted Gaussians (the shared test covers the unfitted graph)."""
    from vigil.training.export import export_onnx

    graph, _ = _graph(shape, seed=1)
    names = export_onnx(graph, tmp_path / "model.onnx")
    session = create_session(tmp_path / "model.onnx", ["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((9, *shape), dtype=np.float32)
    alone = [run(session, x[i : i + 1], names) for i in range(len(x))]
    for start, stop in [(0, 9), (2, 7)]:
        batch = run(session, x[start:stop], names)
        for i in range(start, stop):
            for name in ("local", "defect", "heatmap", "overall", "combined", "anomaly_map"):
                assert np.array_equal(batch[name][i - start], alone[i][name][0]), (name, i)


def test_heatmap_adds_the_two_maps_in_their_standard_units() -> None:
    """A place both maps find unusual (z 2 in each) outranks either map's stronger stray
    peak (z 3 in one, normal in the other)."""
    from vigil.training.models import AutoEncoder, ModelConfig
    from vigil.training.scores import ScoreGraph

    graph = ScoreGraph(AutoEncoder(ModelConfig(height=48, width=48)).eval())
    graph.overall_mean[1:3] = torch.tensor([1.0, -2.0])  # local, defect
    graph.overall_std[1:3] = torch.tensor([2.0, 0.5])
    local, defect = torch.full((1, 1, 8, 8), 1.0), torch.full((1, 1, 8, 8), -2.0)
    local[0, 0, 1, 1], defect[0, 0, 6, 6] = 7.0, -0.5  # z 3, alone
    local[0, 0, 4, 4], defect[0, 0, 4, 4] = 5.0, -1.0  # z 2 in both
    fused = graph.fuse(local, defect)
    assert float(fused[0, 0, 4, 4]) == 4.0 and int(fused.flatten().argmax()) == 4 * 8 + 4
    assert float(fused[0, 0, 1, 1]) == float(fused[0, 0, 6, 6]) == 3.0


@pytest.mark.parametrize(
    ("local", "tiled", "layout", "parts"),
    [
        (False, False, 0.0, ("combined",)),  # without the local detectors: combined, always
        (True, False, 0.3, ("combined", "heatmap")),  # an object in place
        (True, False, 0.001, ("heatmap",)),  # crops of a texture: no layout, not combined
        (True, True, 0.3, ("combined", "local", "defect", "heatmap")),
        (True, True, 0.001, ("local", "defect", "heatmap")),
    ],
)
def test_overall_takes_heatmap_and_the_parts_that_fit_the_data(
    local: bool, tiled: bool, layout: float, parts: tuple[str, ...]
) -> None:
    from vigil.core.score_names import overall_parts

    assert overall_parts(local, tiled, layout) == parts


def test_layout_share_is_one_for_copies_of_an_image_and_near_zero_for_texture_crops() -> None:
    from vigil.training.scores import layout_share

    rng = np.random.default_rng(0)
    texture = rng.random((300, 300), dtype=np.float32)
    starts = rng.integers(0, 300 - 32, (500, 2))
    crops = np.stack([texture[r : r + 32, c : c + 32] for r, c in starts])[:, None]
    assert layout_share(crops) < 0.01
    scene = rng.random((1, 3, 16, 16), dtype=np.float32)
    assert layout_share(np.repeat(scene, 40, 0)) == pytest.approx(1.0)
    # an object in place, its sensor noise and exposure varying: most of it is layout
    seen = scene * rng.uniform(0.8, 1.2, (40, 1, 1, 1)) + rng.normal(0, 0.05, (40, 3, 16, 16))
    assert 0.5 < layout_share(seen.astype(np.float32)) < 1.0
    assert layout_share(np.zeros((5, 1, 4, 4), np.float32)) == 0.0  # no variation at all


def test_training_records_the_layout_and_describes_the_primary_as_it_is(vae_bundle: Path) -> None:
    """The session's 28x28 bundle: without the local detectors `overall` is `combined`;
    the manifest records the layout share."""
    manifest = read_manifest(vae_bundle)
    assert manifest.training.layout_share is not None and manifest.training.layout_share > 0.05
    assert manifest.score_descriptions["overall"].startswith("combined, standardised")


@pytest.mark.parametrize(
    "parts",
    [
        ("heatmap",),
        ("combined", "heatmap"),
        ("local", "defect", "heatmap"),
        ("combined", "local", "defect", "heatmap"),
    ],
)
def test_overall_is_the_largest_chosen_part_and_the_map_peaks_at_its_local_share(
    parts: tuple[str, ...],
) -> None:
    graph, x = _graph((1, 48, 48))
    graph.overall_from = parts
    with torch.no_grad():
        out = graph(x[120:])
    z = {p: graph.in_overall_units(p, out[p]) for p in parts}
    assert torch.equal(out["overall"], torch.stack(list(z.values()), 1).amax(1))
    local_share = torch.stack([z[p] for p in parts if p != "combined"], 1).amax(1)
    assert torch.allclose(out["anomaly_map"].flatten(1).amax(1), local_share, atol=1e-5)


# ---------------------------------------------------------------- schema 2 and tiled bundles


def test_schema_1_bundles_still_load_and_unknown_versions_fail_clearly(ae_bundle: Path,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    assert READABLE_VERSIONS == (1, 2)
    data = json.loads((ae_bundle / "manifest.json").read_text())
    assert data["schema_version"] == 2 and data["tiling"] is None
    old = tmp_path / "old"
    old.mkdir()
    v1 = {k: v for k, v in data.items() if k != "tiling"} | {"schema_version": 1}
    v1["calibration"] = {
        k: v for k, v in data["calibration"].items() if k not in ("requested_target_fpr", "note")
    }
    (old / "manifest.json").write_text(json.dumps(v1))
    assert read_manifest(old).schema_version == 1
    (old / "manifest.json").write_text(json.dumps(v1 | {"schema_version": 3}))
    with pytest.raises(BundleError, match="reads versions 1, 2"):
        read_manifest(old)


# The session's tiled bundle is trained in the first test that asks for it (~2-4 min).
@pytest.mark.timeout(600)
@pytest.mark.slow
def test_large_images_are_tiled_by_default_end_to_end(tiled_bundle: Path) -> None:
    """160x160 frames: tiles of 64 at stride 32 (16 a frame); evaluation and calibration per
    frame; frames with a small bright defect score above the normal frames."""
    from conftest import smooth_noise_frames

    from vigil.core.bundle import load_bundle
    from vigil.core.verdicts import Judge
    from vigil.training.calibrate import score_images

    manifest, _ = load_bundle(tiled_bundle)
    assert manifest.tiling is not None and manifest.input.height == 64
    assert (manifest.tiling.frame_height, manifest.tiling.stride_height) == (160, 32)
    assert manifest.calibration.n == 26  # whole frames, not tiles
    test = np.round(smooth_noise_frames(10, 160, seed=5) * 255) / 255
    bad = test.copy()
    bad[:, 100:104, 50:54] = 1.0
    out = score_images(tiled_bundle, np.concatenate([test, bad])[:, None].astype(np.float32))
    assert out["anomaly_map"].shape == (20, 1, 160, 160)
    assert Judge(manifest).flags(out)[10:].all()
    assert out["local"][10:].min() > out["local"][:10].max()
    peak = out["anomaly_map"][10:, 0].reshape(10, -1).argmax(1)
    assert (np.abs(peak // 160 - 102) <= 8).all() and (np.abs(peak % 160 - 52) <= 8).all()
