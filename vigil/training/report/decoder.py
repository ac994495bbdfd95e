"""What the decoder draws: samples from the prior, latent interpolations, the 2-D manifold."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vigil.core.bundle import LATENT_OUTPUT
from vigil.core.runtime import create_session, run
from vigil.training.evaluate import Evaluation
from vigil.training.report.document import Block, Image, Section
from vigil.training.report.plotting import SEED, bare, mosaic, save, show, tile, tile_gap

log = logging.getLogger("vigil.report")
SAMPLE_GRID = 8


MANIFOLD_STEPS = 15


MANIFOLD_RANGE = 2.5


INTERPOLATION_STEPS = 10


DECODER_PLOTS = ("samples.png", "interpolation.png", "manifold.png")


Decode = Callable[[np.ndarray], np.ndarray]


def decoder_section(out: Path, ev: Evaluation, decoder: Path | None) -> Section:
    """Decoder plots; a decoder that fails to load or run costs these plots, not the report."""
    section = Section("Decoder")
    if decoder is None or LATENT_OUTPUT not in ev.outputs:
        return section
    try:
        session = create_session(Path(decoder), providers=["CPUExecutionProvider"])

        def decode(z: np.ndarray) -> np.ndarray:
            return next(iter(run(session, np.ascontiguousarray(z, dtype=np.float32)).values()))

        section.blocks += _decoder_blocks(out, ev, decode)
    except Exception as exc:  # onnxruntime raises its own exception types
        log.warning("decoder plots skipped: %s", exc)
        for name in DECODER_PLOTS:
            (out / name).unlink(missing_ok=True)
        section.blocks = [f"Decoder plots skipped: {decoder} could not be run ({exc})."]
    return section


def _decoder_blocks(out: Path, ev: Evaluation, decode: Decode) -> list[Block]:
    blocks: list[Block] = []
    latent = np.asarray(ev.outputs[LATENT_OUTPUT], dtype=np.float32)
    d = latent.shape[1]
    variational = ev.manifest.model.kind in ("vae", "beta-vae")
    if variational:
        blocks.append(
            Image(
                _plot_samples(out, decode, d),
                f"{SAMPLE_GRID**2} images decoded from "
                f"z ~ N(0, I) (seed {SEED}): what the model thinks a normal image looks like.",
            )
        )
    file = _plot_interpolation(out, ev, decode, latent)
    if file is not None:
        blocks.append(
            Image(
                file,
                "Decoded straight lines between latent codes, with the two inputs at the "
                "ends: between two normal images, and from a normal image to an anomaly.",
            )
        )
    if variational and d == 2:
        blocks.append(
            Image(
                _plot_manifold(out, decode),
                f"The decoder over a regular {MANIFOLD_STEPS} × "
                f"{MANIFOLD_STEPS} grid of z in [-{MANIFOLD_RANGE}, {MANIFOLD_RANGE}]².",
            )
        )
    return blocks


def _plot_samples(out: Path, decode: Decode, d: int) -> str:
    z = np.random.default_rng(SEED).standard_normal((SAMPLE_GRID**2, d))
    images = decode(z)
    tiles = np.stack([tile(x) for x in images])
    fig = Figure(figsize=(6.5, 6.8), layout="constrained")
    ax = fig.subplots()
    show(ax, mosaic(tiles, SAMPLE_GRID, SAMPLE_GRID, tile_gap(images.shape[2])))
    bare(ax)
    ax.set_title(f"Samples from the prior, z ~ N(0, I), d = {d}")
    return save(fig, out, "samples.png")


def _interpolation_pairs(ev: Evaluation, latent: np.ndarray) -> list[tuple[str, int, int]]:
    """From the most typical normal image to the most different typical one, and to the
    highest-scoring anomaly."""
    primary = np.asarray(ev.outputs[ev.manifest.primary_score], dtype=np.float64)
    normals = np.flatnonzero(ev.labels == 0)
    anomalies = np.flatnonzero(ev.labels == 1)
    if normals.size == 0:
        return []
    order = normals[np.argsort(primary[normals], kind="stable")]
    start = int(order[0])  # the most typical normal image
    pairs = []
    if order.size > 1:
        typical = order[1 : max(2, (len(order) + 1) // 2)]  # the better-scoring half
        far = typical[np.argmax(((latent[typical] - latent[start]) ** 2).sum(axis=1))]
        pairs.append(("normal → normal", start, int(far)))
    if anomalies.size:
        pairs.append(("normal → anomaly", start, int(anomalies[np.argmax(primary[anomalies])])))
    return pairs


def _plot_interpolation(
    out: Path, ev: Evaluation, decode: Decode, latent: np.ndarray
) -> str | None:
    pairs = _interpolation_pairs(ev, latent)
    if not pairs:
        return None
    steps = np.linspace(0.0, 1.0, INTERPOLATION_STEPS)
    h = ev.images.shape[2]
    pad = tile_gap(h)
    fig = Figure(
        figsize=(1.0 * (INTERPOLATION_STEPS + 2) + 1, 1.45 * len(pairs) + 0.4), layout="constrained"
    )
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, (label, a, b) in zip(axes, pairs, strict=True):
        z = (1 - steps[:, None]) * latent[a] + steps[:, None] * latent[b]
        decoded = [tile(x) for x in decode(z)]
        tiles = np.stack([tile(ev.images[a]), *decoded, tile(ev.images[b])])
        show(ax, mosaic(tiles, 1, len(tiles), pad))
        bare(ax)
        centres = [
            k * (ev.images.shape[3] + pad) + (ev.images.shape[3] - 1) / 2 for k in range(len(tiles))
        ]
        ticks = [f"#{a}", *(f"{t:.2g}" for t in steps), f"#{b}"]
        ax.set_xticks(centres, ticks, fontsize=7)
        ax.set_ylabel(label, fontsize=8)
    axes[-1].set_xlabel("input · interpolation weight t · input")
    fig.suptitle("Latent interpolation", fontsize=11)
    return save(fig, out, "interpolation.png")


def _plot_manifold(out: Path, decode: Decode) -> str:
    grid = np.linspace(-MANIFOLD_RANGE, MANIFOLD_RANGE, MANIFOLD_STEPS)
    z1, z2 = np.meshgrid(grid, grid[::-1])  # top row = largest z2
    images = decode(np.c_[z1.ravel(), z2.ravel()])
    tiles = np.stack([tile(x) for x in images])
    half = (grid[1] - grid[0]) / 2
    extent = (
        -MANIFOLD_RANGE - half,
        MANIFOLD_RANGE + half,
        -MANIFOLD_RANGE - half,
        MANIFOLD_RANGE + half,
    )
    fig = Figure(figsize=(7.5, 7.5), layout="constrained")
    ax = fig.subplots()
    show(ax, mosaic(tiles, MANIFOLD_STEPS, MANIFOLD_STEPS, 0), extent=extent)
    ax.set(title="Decoded latent grid", xlabel="z₁", ylabel="z₂")
    return save(fig, out, "manifold.png")
