"""Training curves, ROC curves and score histograms against the calibrated thresholds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from vigil.training.evaluate import Evaluation
from vigil.training.report.document import Image, Section
from vigil.training.report.format import num, pct, rate
from vigil.training.report.plotting import (
    ANOMALY_COLOR,
    NORMAL_COLOR,
    has_anomalies,
    has_normals,
    save,
)

LOG_SPAN = 50  # a positive score spanning this max/min ratio is drawn on a log axis


def training_section(out: Path, history: list[dict[str, float]] | None, best: int) -> Section:
    section = Section("Training")
    if not history:
        return section
    file = _plot_training(out, history, best)
    section.blocks.append(
        Image(file, f"Loss per epoch; the dashed line marks the best epoch ({best}).")
    )
    row = next((r for r in history if int(r.get("epoch", -1)) == best), None)
    if row is not None:
        section.blocks.append(
            f"Best epoch {best}: train loss {num(row.get('loss'))}, "
            f"validation loss {num(row.get('val_loss'))}."
        )
    return section


def _plot_training(out: Path, history: list[dict[str, float]], best: int) -> str:
    epochs = np.array([r.get("epoch", i + 1) for i, r in enumerate(history)], dtype=float)
    series = {
        key: np.array([r.get(key, np.nan) for r in history], dtype=float)
        for key in ("loss", "val_loss", "recon", "kl")
    }
    show_kl = bool(np.nan_to_num(np.abs(series["kl"])).max() > 0)
    panels = 3 if show_kl else 2
    fig = Figure(figsize=(4.4 * panels, 3.4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    marker = "o" if len(epochs) <= 30 else None
    plots = [
        ("Total loss", [("train", "loss", NORMAL_COLOR), ("validation", "val_loss", "#ff7f0e")]),
        ("Reconstruction term (train)", [("recon", "recon", "#2ca02c")]),
        ("KL term (train)", [("KL", "kl", "#9467bd")]),
    ]
    for ax, (title, lines) in zip(axes, plots[:panels], strict=False):
        for label, key, color in lines:
            ax.plot(epochs, series[key], marker=marker, ms=3, color=color, label=label)
        ax.axvline(best, color="0.3", ls="--", lw=1, label=f"best epoch ({best})")
        ax.set(title=title, xlabel="epoch", ylabel="loss per image")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save(fig, out, "training.png")


def scores_section(out: Path, ev: Evaluation) -> Section:
    section = Section("Scores")
    if has_anomalies(ev) and has_normals(ev):
        section.blocks.append(
            Image(
                _plot_roc(out, ev),
                "ROC curves of every score; right: the low-FPR region on a log axis. "
                "Dots mark each score's calibrated threshold.",
            )
        )
    else:
        section.blocks.append("No ROC curves: the evaluation set lacks normal or anomalous images.")
    section.blocks.append(
        Image(
            _plot_histograms(out, ev),
            "Score distributions of normal and anomalous images (each group sums to 1); "
            "the dashed line is the calibrated threshold.",
        )
    )
    return section


def _plot_roc(out: Path, ev: Evaluation) -> str:
    m = ev.manifest
    labels = ev.labels == 1
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    linear, log = fig.subplots(1, 2)
    for name in m.scores:
        scores = np.asarray(ev.outputs[name], dtype=np.float64)
        ok = np.isfinite(scores)
        fpr, tpr, _ = roc_curve(labels[ok], scores[ok])
        auroc = ev.metrics.get(name, {}).get("auroc", float("nan"))
        primary = name == m.primary_score
        style: dict[str, Any] = {"lw": 2.4 if primary else 1.3, "zorder": 3 if primary else 2}
        (line,) = linear.plot(fpr, tpr, label=f"{name} (AUROC {rate(auroc)})", **style)
        log.plot(np.maximum(fpr, 1e-4), tpr, color=line.get_color(), **style)
        point = ev.metrics.get(name, {})
        if "fpr" in point and "tpr" in point:
            for ax in (linear, log):
                ax.plot(max(point["fpr"], 1e-4), point["tpr"], "o", color=line.get_color(), ms=5)
    linear.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="chance")
    linear.set(
        title="ROC",
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    linear.legend(fontsize=8, loc="lower right")
    target = m.calibration.target_fpr
    log.axvline(target, color="0.3", ls="--", lw=1, label=f"target FPR {pct(target)}")
    log.set_xscale("log")
    lowest = max(1e-4, 1.0 / max(int((~labels).sum()), 1))
    log.set(
        title="ROC, low-FPR region",
        xlabel="false-positive rate (log)",
        ylabel="true-positive rate",
        xlim=(lowest / 1.5, 1),
        ylim=(0, 1.01),
    )
    dot = Line2D([], [], marker="o", ls="", color="0.3", label="calibrated threshold")
    log.legend(handles=[*log.get_legend_handles_labels()[0], dot], fontsize=8, loc="lower right")
    for ax in (linear, log):
        ax.grid(alpha=0.3)
    return save(fig, out, "roc.png")


def _plot_histograms(out: Path, ev: Evaluation) -> str:
    names = list(ev.manifest.scores)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        _histogram(ax, ev, name)
    for ax in axes[len(names) :]:
        ax.remove()
    legend: dict[str, Any] = {}
    for ax in axes[: len(names)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside upper center", ncols=len(legend))
    return save(fig, out, "histograms.png")


def _histogram(ax: Axes, ev: Evaluation, name: str) -> None:
    scores = np.asarray(ev.outputs[name], dtype=np.float64)
    ok = np.isfinite(scores)
    threshold = ev.thresholds.get(name)
    values = scores[ok]
    if values.size == 0:
        ax.set_title(f"{name}: no finite scores")
        return
    logx = bool(values.min() > 0 and values.max() / values.min() >= LOG_SPAN)
    lo, hi = float(values.min()), float(values.max())
    if threshold is not None and math.isfinite(threshold) and (threshold > 0 or not logx):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.geomspace(lo, hi, 50) if logx else np.linspace(lo, hi, 50)
    for label, color, text in ((0, NORMAL_COLOR, "normal"), (1, ANOMALY_COLOR, "anomalous")):
        group = scores[ok & (ev.labels == label)]
        if group.size:
            # Share of the group per bin: comparable across groups of any size and on log bins.
            weights = np.full(group.size, 1.0 / group.size)
            edges = bins.tolist()
            ax.hist(group, edges, weights=weights, histtype="stepfilled", alpha=0.35, color=color)
            ax.hist(
                group,
                edges,
                weights=weights,
                histtype="step",
                color=color,
                label=f"{text} (n={group.size:,})",  # the same in every panel
            )
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label="calibrated threshold")
    if logx:
        ax.set_xscale("log")
    title = f"{name} (primary)" if name == ev.manifest.primary_score else name
    if threshold is not None:
        title += f", threshold {num(threshold)}"
    ax.set(
        title=title, xlabel=f"{name} score" + (" (log)" if logx else ""), ylabel="share of images"
    )
    ax.grid(alpha=0.3)
