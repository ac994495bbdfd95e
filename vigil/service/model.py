"""The loaded model, its hot reload, and readiness.

A `LoadedModel` is everything one bundle needs to answer requests: manifest, ONNX Runtime
session, `Judge`, provider and its own `Batcher`. The `ModelHolder` owns the current one
and is the one source of readiness (`not_ready`), which /readyz, /score and the
`vigil_ready` gauge all read. A reload (POST /admin/reload, SIGHUP) builds and warms a
new `LoadedModel` in a worker thread while the old one keeps serving, then swaps the
reference (one assignment on the event loop). A request takes a lease on the model it
started with and finishes on it, even across a swap; the old model's batcher is closed
(its queue drained) when its last lease is returned. A failed load leaves the current
model untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vigil.core.bundle import (
    ERROR_MAP_OUTPUT,
    RECONSTRUCTION_IMAGE_OUTPUT,
    BundleError,
    InputSpec,
    Manifest,
    read_bundle,
)
from vigil.core.calibration import CalibrationError
from vigil.core.errors import VigilError
from vigil.core.runtime import ProviderError, check_graph, create_session, run
from vigil.core.verdicts import Judge
from vigil.service.admission import Admission
from vigil.service.batching import Batcher, BatchObserver, Outputs
from vigil.service.drain import Drain
from vigil.service.metrics import Metrics
from vigil.service.settings import GPU_PROVIDER, Settings

log = logging.getLogger("vigil.model")
# Only this provider skips warming every batch shape: a shape's first run on it only
# allocates (others, CUDA's cuDNN first, choose kernels per shape on it).
CPU_PROVIDER = "CPUExecutionProvider"


class NotReady(VigilError):
    """No model can answer now (none loaded yet, a failed load, a dead inference thread)."""

    code = "not_ready"


# The per-pixel outputs a request with maps gets besides the scores.
class SessionRunner:
    """One session call for the batcher (blocking; runs in its inference thread).

    Without maps it asks the graph for the scores alone; with maps (`?heatmap=true`) also
    for the bundle's heatmap (its anomaly map, or the error map) and the reconstruction.

    It holds the session, not the LoadedModel: a model retired by a reload is freed by
    reference counting alone, without waiting for (or escaping) the cyclic GC.
    """

    def __init__(
        self, session: ort.InferenceSession, score_names: list[str], heatmap: str = ERROR_MAP_OUTPUT
    ) -> None:
        self.session = session
        self.outputs = (score_names, [*score_names, heatmap, RECONSTRUCTION_IMAGE_OUTPUT])

    def __call__(self, batch: np.ndarray, with_map: bool) -> Outputs:
        return run(self.session, batch, self.outputs[with_map])


@dataclass(eq=False)
class LoadedModel:
    path: Path
    manifest: Manifest
    session: ort.InferenceSession
    judge: Judge
    provider: str
    target_fpr: float
    batcher: Batcher
    warmup_seconds: float
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    leases: int = 0
    retired: bool = False

    def __post_init__(self) -> None:
        self.score_names = list(self.manifest.scores)
        m = self.manifest
        # What responses name the model by (schemas.ModelRef).
        self.ref = {"name": m.name, "version": m.version, "sha256": m.onnx.sha256}

    def info_labels(self) -> tuple[str, str, str, str]:
        m = self.manifest
        return (m.name, str(m.version), m.model.kind, self.provider)


def load_model(path: Path, settings: Settings, observer: BatchObserver | None) -> LoadedModel:
    """Validate a bundle, open its session, check the provider and warm the batch shapes.

    Blocking (seconds): call it in a worker thread. Raises `BundleError` or `ProviderError`
    saying what is wrong.
    """
    started = time.perf_counter()
    manifest, graph = read_bundle(path)  # one consistent view, even during a publish
    session = _open_session(graph, path, settings)
    check_graph(session, manifest)
    judge = Judge(manifest)
    target_fpr = _default_target_fpr(judge, settings)
    provider = session.get_providers()[0]
    _warn_if_gpu_unused(provider, settings)
    batcher = Batcher(
        SessionRunner(session, list(manifest.scores), manifest.heatmap_output()),
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_s,
        enabled=settings.batching,
        max_request=settings.max_files,
        observer=observer,
        name=f"{manifest.name}-v{manifest.version}",
        admission=Admission(settings.max_queue, settings.latency_budget_s),
    )
    warmup_seconds = _warm_up(batcher, manifest.input, every_shape=provider != CPU_PROVIDER)
    log.info(
        "loaded %s version %d from %s on %s; warmed %d batch shapes in %.2f s (%.2f s in all)",
        manifest.name,
        manifest.version,
        path,
        provider,
        len(batcher.warmed),
        warmup_seconds,
        time.perf_counter() - started,
    )
    return LoadedModel(
        path, manifest, session, judge, provider, target_fpr, batcher, warmup_seconds
    )


def _open_session(graph: bytes, path: Path, settings: Settings) -> ort.InferenceSession:
    try:
        return create_session(
            graph,
            settings.provider_list,
            settings.intra_op_threads or service_threads(),
            require=settings.required_provider,
            allow_spinning=False,  # idle ORT threads must not take CPU from the event loop
        )
    except VigilError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise BundleError(f"ONNX Runtime cannot load the graph of {path}: {exc}") from exc


def service_threads() -> int:
    """The default intra-op thread count: one per CPU this process may use, less one.

    The event loop (HTTP parsing, decoding, JSON) needs a core's worth of CPU: an ORT pool
    sized to every core competes with it (BENCHMARKS.md). The inference thread itself is
    one of the threads.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def _default_target_fpr(judge: Judge, settings: Settings) -> float:
    target_fpr = settings.target_fpr or judge.default_fpr
    try:
        judge.thresholds(target_fpr)
    except CalibrationError as exc:
        raise BundleError(f"default target FPR: {exc.message}") from exc
    return target_fpr


def _warn_if_gpu_unused(provider: str, settings: Settings) -> None:
    gpu = settings.required_provider or GPU_PROVIDER
    if provider != gpu and gpu in settings.provider_list and gpu in ort.get_available_providers():
        log.warning(
            "%s is installed but the session runs on %s (no usable GPU?); set "
            "VIGIL_REQUIRE_GPU=true to fail readiness instead",
            gpu,
            provider,
        )


def _warm_up(batcher: Batcher, spec: InputSpec, every_shape: bool) -> float:
    started = time.perf_counter()
    try:
        example = np.full((spec.channels, spec.height, spec.width), 0.5, np.float32)
        batcher.warm_up(example, every_shape)
    except Exception as exc:
        raise BundleError(f"warm-up run failed: {exc}") from exc
    return time.perf_counter() - started


class ModelHolder:
    """The current model, leases on it, the reload lock, and readiness."""

    def __init__(self, settings: Settings, metrics: Metrics, drain: Drain | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.drain = drain if drain is not None else Drain()
        self.current: LoadedModel | None = None
        self.path: Path | None = settings.bundle  # what SIGHUP and a bare reload load
        # Why there is no model; read only while `current` is None.
        self._no_model = "the model is loading" if settings.bundle else "no bundle is configured"
        self._no_model_code = NotReady.code  # provider_unavailable after a load without CUDA
        self.first_load = asyncio.Event()  # set once the start-up load has finished or failed
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        metrics.ready.set_function(lambda: 0.0 if self.unready else 1.0)

    # -- readiness and leases (event loop only) ------------------------------------------

    @property
    def not_ready(self) -> str | None:
        """Why no request can be scored now, or None when the service is ready."""
        model = self.current
        if model is None:
            return self._no_model
        if model.batcher.failed:
            return "the inference thread stopped (see the log); reload the model"
        return None

    @property
    def unready(self) -> str | None:
        """Why a balancer should send no new work here (/readyz, `vigil_ready`), or None.

        `not_ready`, or a drain after SIGTERM: then requests are still scored, but the
        replica is on its way out.
        """
        if self.drain.active:
            return "shutting down: draining connections after SIGTERM"
        return self.not_ready

    def require_ready(self) -> LoadedModel:
        """The current model for /readyz: `NotReady` while not ready or draining."""
        if self.drain.active:
            raise NotReady(self.unready or "draining")
        return self.require()

    def require(self) -> LoadedModel:
        """The current model, without a lease (for checks); `NotReady` when there is none."""
        reason = self.not_ready
        if reason is not None:
            raise NotReady(reason, self._no_model_code if self.current is None else None)
        assert self.current is not None
        return self.current

    def acquire(self) -> LoadedModel:
        """The current model with a lease: it stays usable until `release`, even if swapped."""
        model = self.require()
        model.leases += 1
        return model

    def release(self, model: LoadedModel) -> None:
        model.leases -= 1
        if model.retired and model.leases == 0:
            self._retire(model)

    # -- loading ----------------------------------------------------------------------------

    async def load(self, path: Path, *, reload: bool = True) -> LoadedModel:
        """Load, validate and warm `path`, then make it the current model.

        On failure the current model (if any) stays, and the error propagates.
        """
        async with self._lock:
            try:
                model = await asyncio.to_thread(load_model, path, self.settings, self.metrics)
            except Exception as exc:
                self._failed(path, exc, reload)
                raise
            self._swap(model, reload)
            return model

    def _swap(self, model: LoadedModel, reload: bool) -> None:
        model.batcher.start()
        old, self.current = self.current, model
        self.path = model.path
        self.metrics.model_loaded(
            model.info_labels(),
            model.target_fpr,
            model.judge.verdict_scores,
            model.manifest.calibration.scores,
            model.judge.thresholds(model.target_fpr),
        )
        if reload:
            self.metrics.reload_finished(True)
        if old is not None:
            old.retired = True
            if old.leases == 0:
                self._retire(old)

    def _failed(self, path: Path, exc: Exception, reload: bool) -> None:
        if reload:
            self.metrics.reload_finished(False)
        message = exc.message if isinstance(exc, VigilError) else f"loading failed: {exc!r}"
        if self.current is None:
            self._no_model = f"no model: loading {path} failed: {message}"
            self._no_model_code = (
                ProviderError.code if isinstance(exc, ProviderError) else NotReady.code
            )
        keeping = "; keeping the current model" if self.current else ""
        if isinstance(exc, VigilError):
            log.error("loading %s failed%s: %s", path, keeping, message)
        else:
            log.exception("loading %s failed unexpectedly%s", path, keeping)

    def _retire(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(model.batcher.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Shutdown: stop serving, finish queued images, close every batcher."""
        model, self.current = self.current, None
        self._no_model = "shutting down"
        self._no_model_code = NotReady.code
        if model is not None:
            model.retired = True
            await model.batcher.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
