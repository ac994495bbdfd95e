"""Example images: input, reconstruction and error map at evenly spaced ranks of the score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure, SubFigure

from vigil.core.bundle import ERROR_MAP_OUTPUT, RECONSTRUCTION_IMAGE_OUTPUT
from vigil.training.evaluate import Evaluation
from vigil.training.report.document import Image, Section
from vigil.training.report.format import class_name
from vigil.training.report.plotting import (
    ANOMALY_COLOR,
    NORMAL_COLOR,
    WRONG_COLOR,
    bare,
    cmap,
    mosaic,
    save,
    show,
    tile,
    tile_gap,
)

EXAMPLES = 8  # per group (normal, anomalous)


def examples_section(out: Path, ev: Evaluation, class_names: Sequence[str] | None) -> Section:
    section = Section("Examples")
    if RECONSTRUCTION_IMAGE_OUTPUT not in ev.outputs or ERROR_MAP_OUTPUT not in ev.outputs:
        return section
    file = _plot_examples(out, ev, class_names)
    section.blocks.append(
        Image(
            file,
            f"{EXAMPLES} normal and {EXAMPLES} anomalous images at evenly spaced ranks of the "
            f"primary score ({ev.manifest.primary_score}), lowest at the top: input, "
            "reconstruction, squared error (one colour scale for all). Red labels mark a wrong "
            "verdict (a false alarm or a missed anomaly).",
        )
    )
    return section


def _pick(scores: np.ndarray, members: np.ndarray, k: int) -> np.ndarray:
    """Indices of `members` at k evenly spaced ranks of `scores`, from lowest to highest."""
    if members.size == 0:
        return members
    order = members[np.argsort(scores[members], kind="stable")]
    ranks = np.unique(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int))
    return order[ranks]


def _plot_examples(out: Path, ev: Evaluation, class_names: Sequence[str] | None) -> str:
    primary = np.asarray(ev.outputs[ev.manifest.primary_score], dtype=np.float64)
    flags = ev.flags
    groups = [
        ("normal", _pick(primary, np.flatnonzero(ev.labels == 0), EXAMPLES)),
        ("anomalous", _pick(primary, np.flatnonzero(ev.labels == 1), EXAMPLES)),
    ]
    groups = [(name, idx) for name, idx in groups if idx.size]
    shown = np.concatenate([idx for _, idx in groups])
    errors = np.asarray(ev.outputs[ERROR_MAP_OUTPUT], dtype=np.float32)
    vmax = float(np.percentile(errors[shown], 99.5)) or 1.0
    rows = max(len(idx) for _, idx in groups)
    fig = Figure(figsize=(4.6 * len(groups), 0.95 * rows + 1.5), layout="constrained")
    subfigs = fig.subfigures(1, len(groups), squeeze=False)[0]
    for sub, (name, idx) in zip(subfigs, groups, strict=True):
        _example_group(sub, ev, name, idx, primary, flags, vmax, class_names)
    return save(fig, out, "examples.png")


def _example_group(
    fig: SubFigure,
    ev: Evaluation,
    name: str,
    idx: np.ndarray,
    primary: np.ndarray,
    flags: np.ndarray,
    vmax: float,
    class_names: Sequence[str] | None,
) -> None:
    """Input, reconstruction and error columns of one group, with the error colour scale below."""
    h = ev.images.shape[2]
    pad = tile_gap(h)
    inputs = np.stack([tile(ev.images[i]) for i in idx])
    recons = np.stack([tile(ev.outputs[RECONSTRUCTION_IMAGE_OUTPUT][i]) for i in idx])
    errors = np.asarray(ev.outputs[ERROR_MAP_OUTPUT], dtype=np.float32)[idx, 0]
    axes = fig.subplots(1, 3)
    show(axes[0], mosaic(inputs, len(idx), 1, pad))
    show(axes[1], mosaic(recons, len(idx), 1, pad))
    image = axes[2].imshow(
        mosaic(errors, len(idx), 1, pad),
        cmap=cmap("inferno"),
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
    )
    for ax, col in zip(axes, ("input", "reconstruction", "error"), strict=True):
        bare(ax)
        ax.set_title(col, fontsize=9)
    centres = [r * (h + pad) + (h - 1) / 2 for r in range(len(idx))]
    axes[0].set_yticks(
        centres, [_example_label(ev, i, primary, flags, class_names) for i in idx], fontsize=7.5
    )
    anomalous = name == "anomalous"
    for tick, i in zip(axes[0].get_yticklabels(), idx, strict=True):
        tick.set_color(WRONG_COLOR if bool(flags[i]) != anomalous else "black")
    fig.suptitle(f"{name} images", fontsize=11, color=ANOMALY_COLOR if anomalous else NORMAL_COLOR)
    fig.colorbar(
        image,
        ax=list(axes),
        orientation="horizontal",
        shrink=0.5,
        aspect=30,
        pad=0.01,
        label="squared error (one scale for all rows)",
    )


def _example_label(
    ev: Evaluation,
    i: int,
    primary: np.ndarray,
    flags: np.ndarray,
    class_names: Sequence[str] | None,
) -> str:
    head = f"#{i}"
    if ev.classes is not None:
        head += f" {class_name(ev.classes[i], class_names)}"
    verdict = "flagged" if flags[i] else "passed"
    return f"{head}\nscore {float(primary[i]):.3g}, {verdict}"
