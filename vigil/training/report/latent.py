"""The latent space in 2-D (as it is, or by PCA), coloured by class and by score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vigil.core.bundle import LATENT_OUTPUT
from vigil.training.evaluate import Evaluation
from vigil.training.report.document import Image, Section
from vigil.training.report.format import class_name
from vigil.training.report.plotting import ANOMALY_COLOR, NORMAL_COLOR, SEED, save

MAX_POINTS = 5000


def latent_section(out: Path, ev: Evaluation, class_names: Sequence[str] | None) -> Section:
    section = Section("Latent space")
    latent = ev.outputs.get(LATENT_OUTPUT)
    if latent is None or len(latent) == 0:
        return section
    file, how = _plot_latent(out, ev, np.asarray(latent, dtype=np.float64), class_names)
    section.blocks.append(
        Image(
            file,
            f"Latent codes (μ for a VAE) {how}; left by class (or normal / anomalous), "
            "right by primary score.",
        )
    )
    return section


def _subsample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, MAX_POINTS, replace=False))


def _project(z: np.ndarray) -> tuple[np.ndarray, list[str], str]:
    """2-D coordinates, axis labels and a description of the projection."""
    d = z.shape[1]
    if d == 1:
        return np.c_[z[:, 0], np.zeros(len(z))], ["z₁", ""], "(one dimension)"
    if d == 2:
        return z, ["z₁", "z₂"], "as they are (2-D)"
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max(float((s**2).sum()), 1e-12)
    labels = [f"PC{k + 1} ({100 * share[k]:.0f} % of variance)" for k in range(2)]
    return centred @ vt[:2].T, labels, f"projected from {d} dimensions to 2 by PCA"


def _plot_latent(
    out: Path, ev: Evaluation, latent: np.ndarray, class_names: Sequence[str] | None
) -> tuple[str, str]:
    idx = _subsample(len(latent))
    xy, axis_labels, how = _project(latent[idx])
    if len(idx) < len(latent):
        how += f", {len(idx):,} of {len(latent):,} points"
    order = np.random.default_rng(SEED).permutation(len(idx))  # no class drawn on top of all
    xy, idx = xy[order], idx[order]
    fig = Figure(figsize=(12, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors, handles = _point_colors(ev, idx, class_names)
    size = 6 if len(idx) > 1000 else 14
    left.scatter(xy[:, 0], xy[:, 1], c=colors, s=size, alpha=0.6, linewidths=0, rasterized=True)
    left.legend(
        handles=handles,
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        title="class" if ev.classes is not None else None,
        frameon=False,
    )
    primary = np.asarray(ev.outputs[ev.manifest.primary_score], dtype=np.float64)[idx]
    points = right.scatter(
        xy[:, 0],
        xy[:, 1],
        c=primary,
        cmap="viridis",
        s=size,
        alpha=0.7,
        linewidths=0,
        rasterized=True,
        vmin=np.nanpercentile(primary, 1),
        vmax=np.nanpercentile(primary, 99),
    )
    fig.colorbar(points, ax=right, label=f"{ev.manifest.primary_score} score")
    by = "class" if ev.classes is not None else "label"
    for ax, title in ((left, f"Latent space by {by}"), (right, "Latent space by primary score")):
        ax.set(title=title, xlabel=axis_labels[0], ylabel=axis_labels[1])
        ax.grid(alpha=0.3)
    return save(fig, out, "latent.png"), how


def _point_colors(
    ev: Evaluation, idx: np.ndarray, class_names: Sequence[str] | None
) -> tuple[list[Any], list[Line2D]]:
    labels = ev.labels[idx]
    values = None if ev.classes is None else np.asarray(ev.classes)[idx]
    kinds = [] if values is None else sorted(set(values.tolist()))
    if values is None or len(kinds) > 20:
        colors = [ANOMALY_COLOR if a == 1 else NORMAL_COLOR for a in labels]
        handles = [_handle(NORMAL_COLOR, "normal"), _handle(ANOMALY_COLOR, "anomalous")]
        return colors, handles
    palette = colormaps["tab10" if len(kinds) <= 10 else "tab20"]
    lookup = {k: palette(i) for i, k in enumerate(kinds)}
    normal = set(np.asarray(ev.classes)[ev.labels == 0].tolist())
    handles = [
        _handle(lookup[k], class_name(k, class_names) + (" (normal)" if k in normal else ""))
        for k in kinds
    ]
    return [lookup[v] for v in values.tolist()], handles


def _handle(color: Any, label: str) -> Line2D:
    return Line2D([], [], marker="o", ls="", color=color, label=label, markersize=6)
