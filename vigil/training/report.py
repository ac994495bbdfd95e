"""The evaluation report: PNG plots, an HTML page and its Markdown twin, and metrics.json.

`write_report` draws with matplotlib's object API (`matplotlib.figure.Figure`, rendered by
Agg when saved as PNG), never through pyplot: it sets no global backend, keeps no figure
registry, and every figure is freed once saved.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from vigil.core.bundle import Manifest
from vigil.core.runtime import create_session, run
from vigil.training.evaluate import Evaluation

NORMAL_COLOR = "#1f77b4"
ANOMALY_COLOR = "#d62728"
WRONG_COLOR = "#d62728"
EXAMPLES = 8  # per group (normal, anomalous)
MAX_POINTS = 5000
SAMPLE_GRID = 8
MANIFOLD_STEPS = 15
MANIFOLD_RANGE = 2.5
INTERPOLATION_STEPS = 10
SEED = 0
LOG_SPAN = 50  # a positive score spanning this max/min ratio is drawn on a log axis
DPI = 110
DECODER_PLOTS = ("samples.png", "interpolation.png", "manifold.png")
PLOTS = ("training.png", "roc.png", "histograms.png", "examples.png", "latent.png", *DECODER_PLOTS)

Decode = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger("vigil.report")


# ---------------------------------------------------------------- document model


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    highlight: int | None = None  # index of a row to emphasise
    numeric: bool = False  # columns after the first hold numbers (right-aligned)


@dataclass(frozen=True)
class Image:
    file: str
    caption: str


Block = str | Table | Image


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---------------------------------------------------------------- entry point


def write_report(
    out: Path,
    evaluation: Evaluation,
    history: list[dict[str, float]] | None,
    decoder: Path | None,
    class_names: Sequence[str] | None = None,
    title: str = "Vigil report",
) -> Path:
    """Write plots, index.html, report.md and metrics.json into `out`; returns index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # no stale plots from an earlier report in the same folder
        (out / name).unlink(missing_ok=True)
    ev = evaluation
    sections = [
        _overview(ev, history, class_names),
        _metrics_section(ev),
        _training_section(out, history, ev.manifest.training.best_epoch),
        _scores_section(out, ev),
        _examples_section(out, ev, class_names),
        _latent_section(out, ev, class_names),
        _generative_section(out, ev, decoder),
    ]
    sections = [s for s in sections if s.blocks]
    (out / "metrics.json").write_text(json.dumps(_jsonable(ev.summary()), indent=2) + "\n")
    (out / "report.md").write_text(_markdown(title, sections))
    index = out / "index.html"
    index.write_text(_html(title, sections))
    return index


# ---------------------------------------------------------------- helpers


def _has_anomalies(ev: Evaluation) -> bool:
    return bool((ev.labels == 1).any())


def _has_normals(ev: Evaluation) -> bool:
    return bool((ev.labels == 0).any())


def _flags(ev: Evaluation) -> np.ndarray:
    """The verdict per image: any verdict score above its calibrated threshold."""
    flagged = np.zeros(len(ev.labels), dtype=bool)
    for name in ev.manifest.calibration.verdict_scores:
        flagged |= np.asarray(ev.outputs[name]) > ev.thresholds[name]
    return flagged


def _num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


def _rate(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


def _class_name(value: Any, class_names: Sequence[str] | None) -> str:
    try:
        i = int(value)
    except (TypeError, ValueError):
        return str(value)
    if class_names is not None and 0 <= i < len(class_names):
        return f"{class_names[i]}"
    return str(i)


def _jsonable(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, facecolor="white")  # constrained layout: no "tight" pass
    fig.clear()
    return name


def _cmap(name: str) -> Colormap:
    return colormaps[name].with_extremes(bad="white")


def _tile(image: np.ndarray) -> np.ndarray:
    """[C, H, W] -> [H, W] (grayscale) or [H, W, 3] (RGB), clipped to [0, 1]."""
    chw = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)


def _mosaic(tiles: np.ndarray, rows: int, cols: int, pad: int) -> np.ndarray:
    """Tiles [n, H, W(, 3)] laid out row-major; gaps are NaN (grayscale) or white (RGB)."""
    n, h, w = tiles.shape[:3]
    fill = 1.0 if tiles.ndim == 4 else np.nan
    shape = (rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, *tiles.shape[3:])
    canvas = np.full(shape, fill, dtype=np.float32)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = tiles[i]
    return canvas


def _pad(height: int) -> int:
    return max(1, height // 14)


def _show(ax: Axes, image: np.ndarray, **kwargs: Any) -> None:
    if image.ndim == 2:
        ax.imshow(image, cmap=_cmap("gray"), vmin=0.0, vmax=1.0, interpolation="nearest", **kwargs)
    else:
        ax.imshow(image, interpolation="nearest", **kwargs)


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


# ---------------------------------------------------------------- overview and metrics


def _overview(
    ev: Evaluation, history: list[dict[str, float]] | None, class_names: Sequence[str] | None
) -> Section:
    m = ev.manifest
    rows = [
        ["Bundle", f"{m.name} v{m.version}, created {m.created_at:%Y-%m-%d %H:%M} UTC"],
        ["Model", _model_line(m)],
        ["Input", _input_line(m)],
        ["Data source", m.training.data_source],
        ["Normal class", _normal_class(m, class_names)],
        ["Split sizes", ", ".join(f"{k} {v:,}" for k, v in m.training.split_sizes.items())],
        ["Training", _training_line(m, history)],
        [
            "Evaluated on",
            f"{int((ev.labels == 0).sum()):,} normal and "
            f"{int((ev.labels == 1).sum()):,} anomalous images",
        ],
        ["Primary score", f"{m.primary_score}: {m.score_descriptions.get(m.primary_score, '')}"],
        ["Verdict", _verdict_rule(m)],
        [
            "Realised FPR / TPR",
            f"{_pct(ev.verdict.get('fpr'))} of normal images flagged, "
            f"{_pct(ev.verdict.get('tpr'))} of anomalies caught",
        ],
    ]
    return Section("Overview", [Table(["", ""], rows)])


def _model_line(m: Manifest) -> str:
    info = m.model
    parts = [info.kind.upper(), f"latent dim {info.latent_dim}"]
    if info.beta is not None:
        parts.append(f"β = {info.beta:g}")
    parts += [f"{info.loss} loss", f"denoise {info.denoise:g}", f"{info.parameters:,} parameters"]
    return ", ".join(parts)


def _input_line(m: Manifest) -> str:
    s = m.input
    low, high = s.value_range
    return (
        f"{s.channels}×{s.height}×{s.width} ({s.color_mode}), {s.resize} resize, "
        f"{s.dtype} {s.layout} in [{low:g}, {high:g}]"
    )


def _normal_class(m: Manifest, class_names: Sequence[str] | None) -> str:
    c = m.training.normal_class
    if c is None:
        return "— (all training images are normal)"
    name = _class_name(c, class_names)
    return f"{c} ({name})" if name != str(c) else str(c)


def _training_line(m: Manifest, history: list[dict[str, float]] | None) -> str:
    t = m.training
    line = f"{t.epochs} epochs, best epoch {t.best_epoch}, {t.seconds:.0f} s on {t.device}"
    speeds = [r["images_per_second"] for r in history or [] if "images_per_second" in r]
    if speeds:
        line += f", {float(np.median(speeds)):,.0f} images/s (median)"
    return line


def _verdict_rule(m: Manifest) -> str:
    c = m.calibration
    scores = ", ".join(c.verdict_scores)
    return (
        f"anomalous when any of [{scores}] exceeds its threshold; target FPR {_pct(c.target_fpr)}, "
        f"{c.method} calibration on {c.n:,} held-out normal images ({c.data_source})"
    )


METRIC_HEADER = [
    "score",
    "AUROC",
    "AUPRC",
    "FPR @ 95 % TPR",
    "threshold (calibrated)",
    "FPR",
    "TPR",
    "Youden threshold",
    "F1-best threshold",
]


def _metrics_section(ev: Evaluation) -> Section:
    m = ev.manifest
    labelled = _has_anomalies(ev)
    rows, highlight = [], None
    for i, name in enumerate(m.scores):
        row = ev.metrics.get(name, {})
        label = name
        if name == m.primary_score:
            label, highlight = f"★ {name} (primary)", i
        if name in m.calibration.verdict_scores and name != m.primary_score:
            label += " (verdict)"
        rows.append(
            [
                label,
                _rate(row.get("auroc")),
                _rate(row.get("auprc")),
                _pct(row.get("fpr_at_95_tpr")),
                _num(row.get("threshold", ev.thresholds.get(name))),
                _pct(row.get("fpr")),
                _pct(row.get("tpr")),
                _num(row.get("youden_threshold")) if labelled else "—",
                _num(row.get("f1_best_threshold")) if labelled else "—",
            ]
        )
    meanings = [[name, m.score_descriptions.get(name, "")] for name in m.scores]
    blocks: list[Block] = [
        Table(METRIC_HEADER, rows, highlight, numeric=True),
        _threshold_note(ev, labelled),
        Table(["score", "meaning (higher = more anomalous)"], meanings),
    ]
    return Section("Detection metrics", blocks)


def _threshold_note(ev: Evaluation, labelled: bool) -> str:
    c = ev.manifest.calibration
    split = ""
    if len(c.verdict_scores) > 1:
        share = c.target_fpr / len(c.verdict_scores)
        split = (
            f" (each of the {len(c.verdict_scores)} verdict scores at an equal share, "
            f"{_pct(share)}, so that their union meets the target)"
        )
    note = (
        f"The default threshold is the calibrated one: set on the scores of {c.n:,} held-out "
        f"normal images so that a normal image exceeds it with probability at most "
        f"{_pct(c.target_fpr)}{split}. It needs no labelled anomalies. FPR and TPR are what it "
        f"achieves on this evaluation set. "
    )
    if labelled:
        return note + (
            "Youden (maximal TPR − FPR) and F1-best thresholds are chosen with the evaluation "
            "labels: they are shown for reference only, need labelled anomalies and are "
            "optimistic on the data they were chosen on."
        )
    return note + "This set has no labelled anomalies, so label-based metrics are not shown."


# ---------------------------------------------------------------- training curves


def _training_section(out: Path, history: list[dict[str, float]] | None, best: int) -> Section:
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
            f"Best epoch {best}: train loss {_num(row.get('loss'))}, "
            f"validation loss {_num(row.get('val_loss'))}."
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
    return _save(fig, out, "training.png")


# ---------------------------------------------------------------- scores: ROC and histograms


def _scores_section(out: Path, ev: Evaluation) -> Section:
    section = Section("Scores")
    if _has_anomalies(ev) and _has_normals(ev):
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
        (line,) = linear.plot(fpr, tpr, label=f"{name} (AUROC {_rate(auroc)})", **style)
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
    log.axvline(target, color="0.3", ls="--", lw=1, label=f"target FPR {_pct(target)}")
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
    return _save(fig, out, "roc.png")


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
    return _save(fig, out, "histograms.png")


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
        title += f", threshold {_num(threshold)}"
    ax.set(
        title=title, xlabel=f"{name} score" + (" (log)" if logx else ""), ylabel="share of images"
    )
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------- examples


def _examples_section(out: Path, ev: Evaluation, class_names: Sequence[str] | None) -> Section:
    section = Section("Examples")
    if "x_hat" not in ev.outputs or "error_map" not in ev.outputs:
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
    flags = _flags(ev)
    groups = [
        ("normal", _pick(primary, np.flatnonzero(ev.labels == 0), EXAMPLES)),
        ("anomalous", _pick(primary, np.flatnonzero(ev.labels == 1), EXAMPLES)),
    ]
    groups = [(name, idx) for name, idx in groups if idx.size]
    shown = np.concatenate([idx for _, idx in groups])
    errors = np.asarray(ev.outputs["error_map"], dtype=np.float32)
    vmax = float(np.percentile(errors[shown], 99.5)) or 1.0
    rows = max(len(idx) for _, idx in groups)
    fig = Figure(figsize=(4.6 * len(groups), 0.95 * rows + 1.5), layout="constrained")
    subfigs = fig.subfigures(1, len(groups), squeeze=False)[0]
    for sub, (name, idx) in zip(subfigs, groups, strict=True):
        _example_group(sub, ev, name, idx, primary, flags, vmax, class_names)
    return _save(fig, out, "examples.png")


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
    pad = _pad(h)
    inputs = np.stack([_tile(ev.images[i]) for i in idx])
    recons = np.stack([_tile(ev.outputs["x_hat"][i]) for i in idx])
    errors = np.asarray(ev.outputs["error_map"], dtype=np.float32)[idx, 0]
    axes = fig.subplots(1, 3)
    _show(axes[0], _mosaic(inputs, len(idx), 1, pad))
    _show(axes[1], _mosaic(recons, len(idx), 1, pad))
    image = axes[2].imshow(
        _mosaic(errors, len(idx), 1, pad),
        cmap=_cmap("inferno"),
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
    )
    for ax, col in zip(axes, ("input", "reconstruction", "error"), strict=True):
        _bare(ax)
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
        head += f" {_class_name(ev.classes[i], class_names)}"
    verdict = "flagged" if flags[i] else "passed"
    return f"{head}\nscore {float(primary[i]):.3g}, {verdict}"


# ---------------------------------------------------------------- latent space


def _latent_section(out: Path, ev: Evaluation, class_names: Sequence[str] | None) -> Section:
    section = Section("Latent space")
    latent = ev.outputs.get("latent")
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
    return _save(fig, out, "latent.png"), how


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
        _handle(lookup[k], _class_name(k, class_names) + (" (normal)" if k in normal else ""))
        for k in kinds
    ]
    return [lookup[v] for v in values.tolist()], handles


def _handle(color: Any, label: str) -> Line2D:
    return Line2D([], [], marker="o", ls="", color=color, label=label, markersize=6)


# ---------------------------------------------------------------- decoder: samples, interpolation


def _generative_section(out: Path, ev: Evaluation, decoder: Path | None) -> Section:
    """Decoder plots; a decoder that fails to load or run costs these plots, not the report."""
    section = Section("Decoder")
    if decoder is None or "latent" not in ev.outputs:
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
    latent = np.asarray(ev.outputs["latent"], dtype=np.float32)
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
    tiles = np.stack([_tile(x) for x in images])
    fig = Figure(figsize=(6.5, 6.8), layout="constrained")
    ax = fig.subplots()
    _show(ax, _mosaic(tiles, SAMPLE_GRID, SAMPLE_GRID, _pad(images.shape[2])))
    _bare(ax)
    ax.set_title(f"Samples from the prior, z ~ N(0, I), d = {d}")
    return _save(fig, out, "samples.png")


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
    pad = _pad(h)
    fig = Figure(
        figsize=(1.0 * (INTERPOLATION_STEPS + 2) + 1, 1.45 * len(pairs) + 0.4), layout="constrained"
    )
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, (label, a, b) in zip(axes, pairs, strict=True):
        z = (1 - steps[:, None]) * latent[a] + steps[:, None] * latent[b]
        decoded = [_tile(x) for x in decode(z)]
        tiles = np.stack([_tile(ev.images[a]), *decoded, _tile(ev.images[b])])
        _show(ax, _mosaic(tiles, 1, len(tiles), pad))
        _bare(ax)
        centres = [
            k * (ev.images.shape[3] + pad) + (ev.images.shape[3] - 1) / 2 for k in range(len(tiles))
        ]
        ticks = [f"#{a}", *(f"{t:.2g}" for t in steps), f"#{b}"]
        ax.set_xticks(centres, ticks, fontsize=7)
        ax.set_ylabel(label, fontsize=8)
    axes[-1].set_xlabel("input · interpolation weight t · input")
    fig.suptitle("Latent interpolation", fontsize=11)
    return _save(fig, out, "interpolation.png")


def _plot_manifold(out: Path, decode: Decode) -> str:
    grid = np.linspace(-MANIFOLD_RANGE, MANIFOLD_RANGE, MANIFOLD_STEPS)
    z1, z2 = np.meshgrid(grid, grid[::-1])  # top row = largest z2
    images = decode(np.c_[z1.ravel(), z2.ravel()])
    tiles = np.stack([_tile(x) for x in images])
    half = (grid[1] - grid[0]) / 2
    extent = (
        -MANIFOLD_RANGE - half,
        MANIFOLD_RANGE + half,
        -MANIFOLD_RANGE - half,
        MANIFOLD_RANGE + half,
    )
    fig = Figure(figsize=(7.5, 7.5), layout="constrained")
    ax = fig.subplots()
    _show(ax, _mosaic(tiles, MANIFOLD_STEPS, MANIFOLD_STEPS, 0), extent=extent)
    ax.set(title="Decoded latent grid", xlabel="z₁", ylabel="z₂")
    return _save(fig, out, "manifold.png")


# ---------------------------------------------------------------- HTML and Markdown

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .65em; text-align: left; vertical-align: top; }
th { background: #f4f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fff4cc; font-weight: 600; }
table.kv td:first-child { font-weight: 600; background: #f9f9fb; white-space: nowrap; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
p { max-width: 60em; }
"""


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _html(title: str, sections: list[Section]) -> str:
    e = html.escape
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{e(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<nav>{nav}</nav>",
    ]
    for section in sections:
        parts.append(f'<h2 id="{_anchor(section.title)}">{e(section.title)}</h2>')
        parts += [_html_block(block) for block in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_block(block: Block) -> str:
    e = html.escape
    if isinstance(block, str):
        return f"<p>{e(block)}</p>"
    if isinstance(block, Image):
        return (
            f'<figure><img src="{e(block.file)}" alt="{e(block.caption)}">'
            f"<figcaption>{e(block.caption)}</figcaption></figure>"
        )
    key_value = not any(block.header)
    lines = [f'<table class="{"kv" if key_value else "grid"}">']
    if not key_value:
        lines.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header) + "</tr>")
    for i, row in enumerate(block.rows):
        cls = ' class="highlight"' if i == block.highlight else ""
        cells = "".join(
            f"<td{' class=num' if block.numeric and k > 0 else ''}>{e(c)}</td>"
            for k, c in enumerate(row)
        )
        lines.append(f"<tr{cls}>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


def _markdown_block(block: Block) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Image):
        return f"![{Path(block.file).stem}]({block.file})\n\n*{block.caption}*"

    def cells(row: list[str], bold: bool = False) -> str:
        text = [c.replace("|", "\\|") for c in row]
        if bold:
            text = [f"**{c}**" for c in text]
        return "| " + " | ".join(text) + " |"

    header = block.header if any(block.header) else [" "] * len(block.header)
    rule = ["---", *(("---:" if block.numeric else "---") for _ in header[1:])]
    lines = [cells(header), "|" + "|".join(rule) + "|"]
    lines += [cells(row, i == block.highlight) for i, row in enumerate(block.rows)]
    return "\n".join(lines)
