"""The defect head and its synthetic training defects (vigil/training/defects.py, head.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vigil.training import defects
from vigil.training.defects import (
    FILLS,
    blobs,
    contents,
    feathered,
    soft_spots,
    strokes,
    synthesise,
)
from vigil.training.head import DefectHead, HeadConfig, fit_head, mirrored_logits


def stripes(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A regular texture with random phase and a little noise: [n, 1, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.arange(size, dtype=torch.float32)
    phase = torch.rand(n, 1, 1, 1, generator=g) * 6.28
    x = 0.5 + 0.3 * torch.sin(cols / 2.0 + phase).expand(n, 1, size, size)
    return (x + 0.03 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def test_blob_masks_cover_the_share_they_should() -> None:
    masks = blobs(200, 32, 32, torch.Generator().manual_seed(0))
    cover = masks.mean((1, 2, 3))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert float(cover.min()) >= 0.015 and float(cover.max()) <= 0.26


def test_strokes_are_thin_lines() -> None:
    lines = strokes(100, 32, 32, torch.Generator().manual_seed(0))
    assert float(lines.min()) >= 0.0 and float(lines.max()) <= 1.0
    cover = (lines > 0.5).float().mean((1, 2, 3))
    assert float(cover.median()) < 0.1  # a line, not a patch
    assert float((cover > 0).float().mean()) > 0.8  # most are inside the image


def test_every_content_kind_has_the_image_shape() -> None:
    x, other = stripes(8), stripes(8, seed=1)
    fills = contents(x, other, torch.Generator().manual_seed(0))
    assert fills.shape == (len(FILLS), *x.shape)
    assert torch.isfinite(fills).all()


def test_synthesised_defects_change_only_the_masked_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(defects, "SOFT_SHARE", 0.0)  # soft spots have tails: tested below
    x, other = stripes(64), stripes(64, seed=1)
    images, target = synthesise(x, other, torch.Generator().manual_seed(3))
    assert images.shape == x.shape and target.shape == (64, 1, 32, 32)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    change = (images - x).abs()
    changed = change > 1e-6
    # Outside the target (widened by a pixel) only the faint edge of a stroke may move:
    # at most a fifth covered (MARKED), so by at most a fifth of the range.
    near = torch.nn.functional.max_pool2d(target, 3, stride=1, padding=1) > 0
    assert float(change[~near].max()) <= 0.2 + 1e-6
    # Some images stay normal on purpose: the head must also learn to say "nothing".
    untouched = target.flatten(1).amax(1) == 0
    assert 0 < int(untouched.sum()) < 64
    assert torch.equal(images[untouched], x[untouched])
    assert bool(changed[~untouched].flatten(1).any(1).all())


def test_soft_spots_fade_from_a_marked_centre() -> None:
    x = stripes(64)
    spotted, target = soft_spots(x, torch.Generator().manual_seed(5))
    change = (spotted - x).abs()
    std = x.std((1, 2, 3), keepdim=True)
    assert bool(target.flatten(1).any(1).all())  # every spot marks its centre
    # Outside the mask the bump is below SOFT_MARKED of its peak (unclipped peak <= 3 std).
    outside = torch.where(target > 0, torch.zeros_like(change), change)
    limit = defects.SOFT_MARKED * defects.SOFT_AMPLITUDE[1] * std
    assert bool((outside <= limit + 1e-6).all())
    inside = (change * target).flatten(1).amax(1)
    assert bool((inside > outside.flatten(1).amax(1)).all())


def test_synthesis_is_a_function_of_the_seed() -> None:
    x, other = stripes(16), stripes(16, seed=1)
    a = synthesise(x, other, torch.Generator().manual_seed(7))
    b = synthesise(x, other, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(("channels", "height", "width"), [(1, 28, 28), (3, 27, 33), (1, 64, 64)])
def test_head_maps_any_size_to_a_logit_per_pixel(channels: int, height: int, width: int) -> None:
    head = DefectHead(channels, width=4).eval()
    with torch.no_grad():
        out = head(torch.rand(2, channels, height, width))
    assert out.shape == (2, 1, height, width)


def test_a_trained_head_finds_a_spot_it_never_saw() -> None:
    """Trained briefly on stripes with synthetic defects, the head's strongest logit is
    higher on stripes with a bright disk (a shape the generator does not draw) than on
    clean stripes."""
    normal = stripes(400)
    head = DefectHead(1, width=8)
    history = fit_head(head, normal, HeadConfig(head_steps=150, head_batch=16, progress=False))
    assert history.steps == 150 and np.isfinite(history.final_loss)
    test = stripes(40, seed=9)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disk = (((yy - 16) ** 2 + (xx - 12) ** 2) < 9).float()
    spotted = (test + 0.35 * disk).clamp(0, 1)
    with torch.no_grad():
        clean_max = head(test).flatten(1).amax(1)
        spotted_max = head(spotted).flatten(1).amax(1)
    assert float((spotted_max > clean_max).float().mean()) > 0.9


def test_mirrored_logits_are_the_mean_of_the_four_views_and_mirror_with_the_image() -> None:
    """The test-time ensemble: the mean of the head on x and on its three mirror images
    (each mirrored back), so mirroring the input mirrors the map and changes nothing else."""
    torch.manual_seed(0)
    head = DefectHead(1, width=4).eval()
    x = torch.rand(3, 1, 20, 24)
    with torch.no_grad():
        out = mirrored_logits(head, x)
        views = [head(x), *(head(x.flip(d)).flip(d) for d in ((3,), (2,), (2, 3)))]
        torch.testing.assert_close(out, torch.stack(views).mean(0))
        torch.testing.assert_close(mirrored_logits(head, x.flip(3)), out.flip(3))
        torch.testing.assert_close(mirrored_logits(head, x.flip(2, 3)), out.flip(2, 3))


def test_feathered_blobs_keep_their_peak_and_soften_only_some_edges() -> None:
    g = torch.Generator().manual_seed(0)
    masks = blobs(64, 32, 32, g)
    out = feathered(masks, g)
    assert out.shape == masks.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(64))
    soft = ((out > 0) & (out < 1)).flatten(1).any(1)
    assert 0 < int(soft.sum()) < 64  # a share, not all or none
    torch.testing.assert_close(out[~soft], masks[~soft])
