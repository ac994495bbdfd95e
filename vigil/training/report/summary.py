"""The report's first sections: what the bundle is, and its detection metrics per score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vigil.core import redact
from vigil.core.bundle import Manifest
from vigil.training.evaluate import Evaluation
from vigil.training.report.document import Block, Section, Table
from vigil.training.report.format import class_name, num, pct, rate
from vigil.training.report.plotting import has_anomalies


def overview(
    ev: Evaluation, history: list[dict[str, float]] | None, class_names: Sequence[str] | None
) -> Section:
    m = ev.manifest
    rows = [
        ["Bundle", f"{m.name} v{m.version}, created {m.created_at:%Y-%m-%d %H:%M} UTC"],
        ["Model", _model_line(m)],
        ["Input", _input_line(m)],
        ["Data source", redact.text(m.training.data_source)],  # served by /report/: no paths
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
            f"{pct(ev.verdict.get('fpr'))} of normal images flagged, "
            f"{pct(ev.verdict.get('tpr'))} of anomalies caught",
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
    name = class_name(c, class_names)
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
        f"anomalous when any of [{scores}] exceeds its threshold; target FPR {pct(c.target_fpr)}, "
        f"{c.method} calibration on {c.n:,} held-out normal images ({redact.text(c.data_source)})"
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


def metrics_section(ev: Evaluation) -> Section:
    m = ev.manifest
    labelled = has_anomalies(ev)
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
                rate(row.get("auroc")),
                rate(row.get("auprc")),
                pct(row.get("fpr_at_95_tpr")),
                num(row.get("threshold", ev.thresholds.get(name))),
                pct(row.get("fpr")),
                pct(row.get("tpr")),
                num(row.get("youden_threshold")) if labelled else "—",
                num(row.get("f1_best_threshold")) if labelled else "—",
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
            f"{pct(share)}, so that their union meets the target)"
        )
    note = (
        f"The default threshold is the calibrated one: set on the scores of {c.n:,} held-out "
        f"normal images so that a normal image exceeds it with probability at most "
        f"{pct(c.target_fpr)}{split}. It needs no labelled anomalies. FPR and TPR are what it "
        f"achieves on this evaluation set. "
    )
    if labelled:
        return note + (
            "Youden (maximal TPR − FPR) and F1-best thresholds are chosen with the evaluation "
            "labels: they are shown for reference only, need labelled anomalies and are "
            "optimistic on the data they were chosen on."
        )
    return note + "This set has no labelled anomalies, so label-based metrics are not shown."
