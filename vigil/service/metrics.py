"""Prometheus metrics of the service, in a dedicated registry (one per app, so tests can build many).

Exported names (deploy/alerts.yml relies on them):

- `vigil_requests_total{route,method,status}` counter. `route` is the route template
  (`/score`), or `unmatched` for unknown paths; `method` is one of the standard HTTP
  methods or `OTHER`; `status` the numeric code. All three are bounded.
- `vigil_request_duration_seconds{route,method}` histogram.
- `vigil_images_scored_total` counter: images that got a verdict.
- `vigil_anomalies_total{score}` counter: images flagged, per verdict score (`flagged_by`).
- `vigil_score{score}` histogram of raw scores. Buckets are per score, derived from the
  loaded bundle's calibration distribution (normal images): its 1/5/10/25/50/75/90/95/99 %
  quantiles and maximum, the threshold at the default target FPR, and points beyond the
  maximum (max + 0.5, 1, 2, 5, 10, 20 x the 1-99 % spread) for anomalies. Scores can be
  negative (`combined`), so log-spaced buckets would not fit. A reload with different
  calibration data restarts that score's series with the new buckets. A score whose
  buckets reach below zero exports no `_sum` (it would not be monotonic; prometheus_client
  follows OpenMetrics there), but always `_count`.
- `vigil_batch_size` histogram: images per ONNX Runtime call.
- `vigil_queue_wait_seconds` histogram: per image, from queueing to its batch starting.
- `vigil_inference_seconds` histogram: per ONNX Runtime call.
- `vigil_overloaded_total{reason}` counter: requests refused 503 `overloaded` by admission
  control, `reason` `queue_full` (VIGIL_MAX_QUEUE) or `latency_budget`
  (VIGIL_LATENCY_BUDGET_MS); both exported from 0.
- `vigil_model_info{name,version,kind,provider}` gauge = 1 for the loaded model (the old
  label set is removed on reload); `provider` is the execution provider in use.
- `vigil_reloads_total{outcome}` counter, outcome `success` or `failure`.
- `vigil_ready` gauge: 1 while a warmed-up model serves, else 0.
- `vigil_target_fpr` gauge: the default target false-positive rate in force.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from vigil.service.admission import REASONS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
BEYOND_MAX = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def score_buckets(calibration: Sequence[float], threshold: float | None = None) -> list[float]:
    """Histogram bucket bounds for one score from its (normal-image) calibration scores."""
    values = np.asarray(calibration, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [0.0, 1.0]
    top = float(values.max())
    bounds = [float(q) for q in np.quantile(values, QUANTILES)] + [top]
    spread = float(np.quantile(values, 0.99) - np.quantile(values, 0.01))
    if spread <= 0:
        spread = max(abs(top), 1.0) * 0.1
    bounds += [top + k * spread for k in BEYOND_MAX]
    if threshold is not None and math.isfinite(threshold):
        bounds.append(threshold)
    return sorted({float(f"{b:.4g}") for b in bounds})


@dataclass
class _Series:
    bounds: list[float]
    counts: list[int] = field(default_factory=list)  # per bucket (not cumulative), +Inf last
    total: float = 0.0
    negative: bool = False  # a negative score was seen: _sum is not exported

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)


class ScoreHistogram(Collector):
    """`vigil_score{score}`: a histogram whose buckets differ per score (and per bundle)."""

    name = "vigil_score"
    documentation = "Raw anomaly scores of scored images, per score (buckets from calibration)."

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}

    def configure(self, buckets: dict[str, list[float]]) -> None:
        """Set the scores and their buckets; a score whose buckets are unchanged keeps counting."""
        with self._lock:
            self._series = {
                name: old
                if (old := self._series.get(name)) is not None and old.bounds == bounds
                else _Series(bounds)
                for name, bounds in buckets.items()
            }

    def observe(self, score: str, value: float) -> None:
        self.observe_many([{score: value}])

    def observe_many(self, rows: Iterable[dict[str, float]]) -> None:
        """Observe every score of every row (one image's scores), under one lock."""
        with self._lock:
            known = self._series
            for values in rows:
                for score, value in values.items():
                    series = known.get(score)
                    if series is None or not math.isfinite(value):
                        continue
                    series.counts[bisect.bisect_left(series.bounds, value)] += 1
                    series.total += value
                    if value < 0:
                        series.negative = True

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["score"])
        with self._lock:
            for name, series in self._series.items():
                cumulative, buckets = 0, []
                for bound, count in zip([*series.bounds, math.inf], series.counts, strict=True):
                    cumulative += count
                    buckets.append((_le(bound), float(cumulative)))
                if series.bounds[0] < 0 or series.negative:
                    # No _sum: with negative observations it is not monotonic (OpenMetrics
                    # forbids it; prometheus_client then drops _count too). _count is.
                    family.add_metric([name], buckets, None)
                    family.samples.append(Sample(f"{self.name}_count", {"score": name}, cumulative))
                else:
                    family.add_metric([name], buckets, series.total)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=["score"])


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class Metrics:
    """The metric objects of one app, and the small helpers the request path calls."""

    def __init__(self, max_batch: int = 32) -> None:
        disable_created_metrics()  # no *_created series: they double the series count
        self.registry = CollectorRegistry(auto_describe=True)
        self._add_request_metrics()
        self._add_score_metrics()
        self._add_batch_metrics(max_batch)
        self._add_model_metrics()
        self._model_labels: tuple[str, str, str, str] | None = None
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._anomaly_children: dict[str, Counter] = {}  # per score name; never removed

    def _add_request_metrics(self) -> None:
        self.requests = Counter(
            "vigil_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "vigil_request_duration_seconds",
            "HTTP request duration, by route template and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def _add_score_metrics(self) -> None:
        self.images_scored = Counter(
            "vigil_images_scored", "Images scored (each got a verdict).", registry=self.registry
        )
        self.anomalies = Counter(
            "vigil_anomalies",
            "Images flagged as anomalous, per verdict score that flagged them.",
            ["score"],
            registry=self.registry,
        )
        self.scores = ScoreHistogram()
        self.registry.register(self.scores)

    def _add_batch_metrics(self, max_batch: int) -> None:
        sizes = [1.0]
        while sizes[-1] < max_batch:
            sizes.append(sizes[-1] * 2)
        self.batch_size = Histogram(
            "vigil_batch_size",
            "Images per ONNX Runtime call.",
            buckets=sizes,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "vigil_queue_wait_seconds",
            "Per image: time from queueing to its batch starting.",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "vigil_inference_seconds",
            "Duration of one ONNX Runtime call (one batch).",
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.overloaded = Counter(
            "vigil_overloaded",
            "Requests refused 503 overloaded by admission control, by the limit they met.",
            ["reason"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.overloaded.labels(reason)

    def _add_model_metrics(self) -> None:
        self.model_info = Gauge(
            "vigil_model_info",
            "The loaded model (value 1) and the execution provider it runs on.",
            ["name", "version", "kind", "provider"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "vigil_reloads",
            "Model reloads (POST /admin/reload, SIGHUP) by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("success", "failure"):
            self.reloads.labels(outcome)
        # Its value is set by the readiness owner (ModelHolder), read at each scrape.
        self.ready = Gauge(
            "vigil_ready", "1 while a warmed-up model serves, else 0.", registry=self.registry
        )
        self.target_fpr = Gauge(
            "vigil_target_fpr",
            "Default target false-positive rate in force.",
            registry=self.registry,
        )

    # -- request path -------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            label = method if method in METHODS else "OTHER"
            children = (
                self.requests.labels(route, label, str(status)),
                self.request_duration.labels(route, label),
            )
            if len(self._request_children) < 10_000:  # bounded anyway; just a cache
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_verdicts(
        self, scores: Sequence[dict[str, float]], flagged: Sequence[list[str]]
    ) -> None:
        self.images_scored.inc(len(scores))
        self.scores.observe_many(scores)
        for names in flagged:
            for name in names:
                child = self._anomaly_children.get(name)
                if child is None:
                    child = self._anomaly_children[name] = self.anomalies.labels(name)
                child.inc()

    def observe_batch(self, size: int, waits: Iterable[float], seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        for wait in waits:
            self.queue_wait.observe(wait)

    def observe_refusal(self, reason: str) -> None:
        self.overloaded.labels(reason).inc()

    # -- model state ----------------------------------------------------------------------

    def model_loaded(
        self,
        labels: tuple[str, str, str, str],
        target_fpr: float,
        verdict_scores: Sequence[str],
        calibration: Mapping[str, Sequence[float]],
        thresholds: Mapping[str, float],
    ) -> None:
        """A model became the one that serves: swap the info labels, buckets and gauges."""
        if self._model_labels is not None and self._model_labels != labels:
            self.model_info.remove(*self._model_labels)
        self.model_info.labels(*labels).set(1)
        self._model_labels = labels
        self.target_fpr.set(target_fpr)
        for name in verdict_scores:
            self.anomalies.labels(name)  # export 0 before the first anomaly
        self.scores.configure(
            {
                name: score_buckets(values, thresholds.get(name))
                for name, values in calibration.items()
            }
        )

    def reload_finished(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
