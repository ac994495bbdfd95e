import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from vigil.training.defects import gaussian_blur
from vigil.training.graph_ops import GaussianBlur, gaussian_kernel, ssim_map
from vigil.training.models import (
    AutoEncoder,
    ModelConfig,
    Output,
    kl_divergence,
    reconstruction_loss,
)
from vigil.training.scores import ScoreGraph
from vigil.training.spectrum import Spectrum
from vigil.training.train import FitConfig, fit


@pytest.mark.parametrize(
    ("kind", "channels", "height", "width", "latent"),
    [
        ("vae", 1, 28, 28, 16),
        ("ae", 3, 64, 64, 32),
        ("vae", 1, 31, 17, 2),
        ("beta-vae", 3, 5, 9, 4),
    ],
)
def test_shapes_for_any_input_size(
    kind: str, channels: int, height: int, width: int, latent: int
) -> None:
    cfg = ModelConfig(kind=kind, channels=channels, height=height, width=width, latent_dim=latent)  # type: ignore[arg-type]
    model = AutoEncoder(cfg)
    x = torch.rand(3, channels, height, width)
    out = model(x, sample=True)
    assert out.x_hat.shape == x.shape
    assert out.mu.shape == (3, latent)
    assert (out.logvar is None) == (kind == "ae")
    assert float(out.x_hat.detach().min()) >= 0 and float(out.x_hat.detach().max()) <= 1
    assert model.decode(torch.randn(5, latent)).shape == (5, channels, height, width)


def test_kl_of_standard_normal_is_zero_and_kl_is_non_negative() -> None:
    assert torch.allclose(kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8)), torch.zeros(4))
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(100, 8, generator=gen) * 3, torch.randn(100, 8, generator=gen) * 2
    assert bool((kl_divergence(mu, logvar) >= 0).all())


def test_kl_matches_torch_distributions() -> None:
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)


def test_reconstruction_losses() -> None:
    target = torch.rand(2, 1, 4, 4)
    perfect = Output(
        logits=torch.logit(target, eps=1e-6), z=torch.zeros(2, 1), mu=torch.zeros(2, 1), logvar=None
    )
    assert torch.allclose(reconstruction_loss(perfect, target, "mse"), torch.zeros(2), atol=1e-6)
    half = Output(
        logits=torch.zeros(2, 1, 4, 4), z=torch.zeros(2, 1), mu=torch.zeros(2, 1), logvar=None
    )
    ones = torch.ones(2, 1, 4, 4)
    assert torch.allclose(reconstruction_loss(half, ones, "mse"), torch.full((2,), 16 * 0.25))
    assert torch.allclose(
        reconstruction_loss(half, ones, "bce"), torch.full((2,), 16 * 0.6931), atol=1e-3
    )


def test_ssim_of_an_image_with_itself_is_one() -> None:
    x = torch.rand(2, 3, 16, 16)
    blur5 = GaussianBlur(7, 1.5, 5 * 3)
    assert torch.allclose(ssim_map(x, x, blur5), torch.ones_like(x), atol=1e-4)
    assert float(ssim_map(x, torch.rand(2, 3, 16, 16), blur5).mean()) < 0.5


def test_separable_blur_equals_the_2d_gaussian_convolution() -> None:
    x = torch.rand(2, 3, 12, 10)
    g = gaussian_kernel(5, 1.0)
    window = (g[:, None] * g[None, :]).expand(3, 1, 5, 5)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, [2] * 4, mode="reflect"), window, groups=3
    )
    blurred = GaussianBlur(5, 1.0, 3)(x)
    assert blurred.shape == x.shape
    assert torch.allclose(blurred, expected, atol=1e-6)


def test_vae_uses_the_mean_at_inference_and_samples_in_training() -> None:
    model = AutoEncoder(ModelConfig()).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x).z, model(x).mu)
    assert not torch.equal(model(x, sample=True).z, model(x).mu)


def _train_once(seed: int) -> tuple[list[float], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    data = torch.rand(96, 1, 12, 12, generator=gen)
    torch.manual_seed(seed)
    model = AutoEncoder(ModelConfig(height=12, width=12, latent_dim=4, base_width=8))
    history = fit(
        model,
        data[:64],
        data[64:],
        FitConfig(epochs=2, batch_size=16, seed=seed, progress=False, denoise=0.1),
    )
    return [e["loss"] for e in history.epochs], next(model.parameters()).detach().clone()


def test_training_is_deterministic_under_a_seed() -> None:
    loss_a, weights_a = _train_once(seed=7)
    loss_b, weights_b = _train_once(seed=7)
    loss_c, _ = _train_once(seed=8)
    assert loss_a == loss_b and torch.equal(weights_a, weights_b)
    assert loss_a != loss_c


def test_early_stopping_keeps_the_best_weights() -> None:
    data = torch.rand(64, 1, 8, 8)
    model = AutoEncoder(ModelConfig(height=8, width=8, latent_dim=2, base_width=4))
    # A huge learning rate makes validation loss worse after the first epochs.
    history = fit(
        model, data[:48], data[48:], FitConfig(epochs=12, lr=0.5, patience=2, progress=False)
    )
    best = min(e["val_loss"] for e in history.epochs)
    assert history.epochs[history.best_epoch - 1]["val_loss"] == best
    assert len(history.epochs) <= 12


def test_score_graph_standardises_scores() -> None:
    model = AutoEncoder(ModelConfig(height=12, width=12, latent_dim=3, base_width=8)).eval()
    graph = ScoreGraph(model)
    x = torch.rand(50, 1, 12, 12)
    with torch.no_grad():
        graph.fit_latent_density(model.encode(x)[0])
        graph.fit_spectrum(x)
        graph.fit_standardisation(x)
        out = graph(x)
    # The combined score is a mean of standardised logs: about zero on the fitted data.
    assert abs(float(out["combined"].mean())) < 1e-4
    assert abs(float(out["mahalanobis"].mean()) - 1.0) < 0.05  # E[d^2] / dim = 1 on fit data
    # E[d^2] / dim = 1 on the fitted data, less a little for the covariance's shrinkage
    assert 0.9 < float(out["spectrum"].mean()) <= 1.0
    assert set(graph.score_names()) == {
        "reconstruction", "blurred", "ssim", "mahalanobis", "knn", "spectrum", "local",
        "defect", "heatmap", "kl", "combined", "overall",
    }  # fmt: skip


def test_spectrum_sees_blur_and_lost_contrast_that_reconstruct_well() -> None:
    """Fitted on textured images, `spectrum` ranks every blurred or flattened copy above
    every clean image of the same kind: lost detail is far from normal in its features."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(160, 1, 8, 8, generator=g)
    images = 0.5 * F.interpolate(coarse, size=(32, 32), mode="bilinear") + 0.5 * torch.rand(
        160, 1, 32, 32, generator=g
    )
    spectrum = Spectrum(1, 32, 32)
    spectrum.fit(images[:120].split(50))
    clean = images[120:]
    blurred = gaussian_blur(clean, 1.5)
    flat = clean.mean((2, 3), keepdim=True) + 0.4 * (clean - clean.mean((2, 3), keepdim=True))
    with torch.no_grad():
        s_clean, s_blur, s_flat = spectrum(clean), spectrum(blurred), spectrum(flat)
    assert float(s_blur.min()) > float(s_clean.max())
    assert float(s_flat.min()) > float(s_clean.max())


def _objects_on_black(n: int, g: torch.Generator) -> Tensor:
    """[n, 1, 32, 32] bright textured blobs on an exactly black background (as garments)."""
    field = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(32, 32), mode="bilinear")
    shape = field > field.flatten(1).median(1).values.view(n, 1, 1, 1)  # half the image
    texture = 0.4 + 0.5 * torch.rand(n, 1, 32, 32, generator=g)
    return torch.round(shape * texture * 255) / 255


def _jpeg(images: Tensor, quality: int) -> Tensor:
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray((image[0] * 255).round().byte().numpy()).save(
            buffer, format="JPEG", quality=quality
        )
        out.append(torch.tensor(np.asarray(Image.open(buffer)), dtype=torch.float32) / 255)
    return torch.stack(out)[:, None]


def test_spectrum_sees_sensor_noise_lost_black_level_and_jpeg_blocks() -> None:
    """A noisy sensor fills the flat background that clean images leave empty; lost
    contrast lifts the black level; heavy JPEG leaves steps at 8-px block boundaries.
    `spectrum` ranks every such copy above every clean image."""
    g = torch.Generator().manual_seed(1)
    images = _objects_on_black(200, g)
    spectrum = Spectrum(1, 32, 32)
    spectrum.fit(images[:150].split(50))
    clean = images[150:]
    noisy = (clean + 0.06 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    mean = clean.mean((2, 3), keepdim=True)
    washed = mean + 0.6 * (clean - mean)
    compressed = _jpeg(clean, 15)
    with torch.no_grad():
        s_clean = spectrum(clean)
        for bad in (noisy, washed, compressed):
            assert float(spectrum(bad).min()) > float(s_clean.max())


def test_spectrum_blockiness_is_one_without_block_boundaries() -> None:
    """Images smaller than a block have no boundary to compare: the feature is a constant."""
    spectrum = Spectrum(1, 8, 6)
    features = spectrum.features(torch.rand(4, 1, 8, 6))
    assert features.shape == (4, 9)
    assert torch.equal(features[:, 6], torch.zeros(4))  # log of a ratio of 1
