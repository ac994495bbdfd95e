"""`write_report`: every section's figures, then index.html, report.md and metrics.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vigil.core.bundle import DECODER_FILE
from vigil.training.data import FASHION_MNIST_CLASSES
from vigil.training.evaluate import Evaluation
from vigil.training.report.curves import scores_section, training_section
from vigil.training.report.decoder import DECODER_PLOTS, decoder_section
from vigil.training.report.document import render_html, render_markdown
from vigil.training.report.examples import examples_section
from vigil.training.report.format import jsonable
from vigil.training.report.latent import latent_section
from vigil.training.report.summary import metrics_section, overview

PLOTS = ("training.png", "roc.png", "histograms.png", "examples.png", "latent.png", *DECODER_PLOTS)


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
        overview(ev, history, class_names),
        metrics_section(ev),
        training_section(out, history, ev.manifest.training.best_epoch),
        scores_section(out, ev),
        examples_section(out, ev, class_names),
        latent_section(out, ev, class_names),
        decoder_section(out, ev, decoder),
    ]
    sections = [s for s in sections if s.blocks]
    (out / "metrics.json").write_text(json.dumps(jsonable(ev.summary()), indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(title, sections))
    index = out / "index.html"
    index.write_text(render_html(title, sections))
    return index


def write_bundle_report(
    bundle: Path,
    evaluation: Evaluation,
    history: list[dict[str, float]] | None,
    data: str,
    out: Path | None = None,
) -> Path:
    """The report of a bundle's evaluation, in `out` (default: the bundle's report/)."""
    decoder = bundle / DECODER_FILE
    return write_report(
        out or bundle / "report",
        evaluation,
        history,
        decoder if decoder.exists() else None,
        class_names=FASHION_MNIST_CLASSES if data == "fashion-mnist" else None,
        title=f"Vigil report: {evaluation.manifest.name}",  # not the folder: it may be staged
    )
