"""The loaded model and its hot reload.

A `LoadedModel` is everything one bundle needs to answer requests: manifest, ONNX Runtime
session, `Judge`, provider and its own `Batcher`. The `ModelHolder` owns the current one.
A reload (POST /admin/reload, SIGHUP) builds and warms a new `LoadedModel` in a worker
thread while the old one keeps serving, then swaps the reference atomically (one
assignment on the event loop). A request takes a lease on the model it started with and
finishes on it, even across a swap; the old model's batcher is closed (its queue drained)
when its last lease is returned. A failed load leaves the current model untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vigil.core.bundle import ERROR_MAP_OUTPUT, BundleError, Manifest, load_bundle
from vigil.core.calibration import CalibrationError
from vigil.core.runtime import ProviderError, create_session, run
from vigil.core.verdicts import Judge
from vigil.service.batching import Batcher, BatchObserver, Outputs
from vigil.service.errors import ApiError
from vigil.service.metrics import Metrics, score_buckets
from vigil.service.settings import Settings

log = logging.getLogger("vigil.model")


class ModelError(ApiError):
    """A bundle that could not be loaded (or no model to serve), with its API status and code."""


class SessionRunner:
    """One session call for the batcher (blocking; runs in its inference thread).

    It holds the session, not the LoadedModel: a model retired by a reload is freed by
    reference counting alone, without waiting for (or escaping) the cyclic GC.
    """

    def __init__(
        self, session: ort.InferenceSession, score_names: list[str], heatmap: str = ERROR_MAP_OUTPUT
    ) -> None:
        self.session = session
        self.outputs = (score_names, [*score_names, heatmap])

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

    def buckets(self) -> dict[str, list[float]]:
        thresholds = self.judge.thresholds(self.target_fpr)
        return {
            name: score_buckets(values, thresholds.get(name))
            for name, values in self.manifest.calibration.scores.items()
        }

    def describe(self) -> dict[str, Any]:
        """GET /model: the manifest's public part plus what this process made of it."""
        low, high = self.judge.fpr_range
        data = self.manifest.public()
        data.update(
            provider=self.provider,
            providers=list(self.session.get_providers()),
            target_fpr=self.target_fpr,
            target_fpr_range=[low, high],
            thresholds=self.judge.thresholds(self.target_fpr),
            batching={
                "enabled": self.batcher.enabled,
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait_s * 1000,
                "warmed_shapes": len(self.batcher.shapes),
            },
            loaded_at=self.loaded_at.isoformat(),
            warmup_seconds=round(self.warmup_seconds, 3),
        )
        return data


def load_model(path: Path, settings: Settings, observer: BatchObserver | None) -> LoadedModel:
    """Validate a bundle, open its session, check the provider and warm every batch shape.

    Blocking (seconds): call it in a worker thread. Raises `ModelError` saying what is wrong.
    """
    started = time.perf_counter()
    try:
        manifest, model_path = load_bundle(path)
    except BundleError as exc:
        raise ModelError(422, "invalid_bundle", str(exc)) from exc
    try:
        session = create_session(
            model_path,
            settings.provider_list,
            settings.intra_op_threads or service_threads(),
            require=settings.required_provider,
            allow_spinning=False,  # idle ORT threads must not take CPU from the event loop
        )
    except ProviderError as exc:
        raise ModelError(503, "provider_unavailable", str(exc)) from exc
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(
            422, "invalid_bundle", f"ONNX Runtime cannot load {model_path}: {exc}"
        ) from exc
    _check_graph(session, manifest)
    judge = Judge(manifest)
    target_fpr = settings.target_fpr or manifest.calibration.target_fpr
    try:
        judge.thresholds(target_fpr)
    except CalibrationError as exc:
        raise ModelError(422, "invalid_bundle", f"default target FPR: {exc}") from exc
    provider = session.get_providers()[0]
    gpu = settings.required_provider or "CUDAExecutionProvider"
    if provider != gpu and gpu in settings.provider_list and gpu in ort.get_available_providers():
        log.warning(
            "%s is installed but the session runs on %s (no usable GPU?); set "
            "VIGIL_REQUIRE_GPU=true to fail readiness instead",
            gpu,
            provider,
        )
    model = LoadedModel(
        path=path,
        manifest=manifest,
        session=session,
        judge=judge,
        provider=provider,
        target_fpr=target_fpr,
        batcher=Batcher(
            SessionRunner(session, list(manifest.scores), manifest.heatmap_output()),
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_s,
            enabled=settings.batching,
            max_request=settings.max_files,
            observer=observer,
            name=f"{manifest.name}-v{manifest.version}",
        ),
        warmup_seconds=0.0,
    )
    spec = manifest.input
    warm_started = time.perf_counter()
    try:
        model.batcher.warm_up(np.full((spec.channels, spec.height, spec.width), 0.5, np.float32))
    except Exception as exc:
        raise ModelError(422, "invalid_bundle", f"warm-up run failed: {exc}") from exc
    model.warmup_seconds = time.perf_counter() - warm_started
    log.info(
        "loaded %s version %d from %s on %s; warmed %d batch shapes in %.2f s (%.2f s in all)",
        manifest.name,
        manifest.version,
        path,
        provider,
        len(model.batcher.shapes),
        model.warmup_seconds,
        time.perf_counter() - started,
    )
    return model


def service_threads() -> int:
    """The default intra-op thread count: one per CPU this process may use, less one.

    The event loop (HTTP parsing, decoding, JSON) runs on its own core's worth of CPU;
    ORT's pool sized to every core competed with it (on 2 cores, 1 thread instead of
    ORT's default 2 gave ~15-25 % more single-image throughput at c=32, and batch-32
    requests lost nothing measurable). The inference thread itself is one of the threads.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def _check_graph(session: ort.InferenceSession, manifest: Manifest) -> None:
    inputs = session.get_inputs()
    spec = manifest.input
    if len(inputs) != 1 or inputs[0].name != manifest.onnx.input_name:
        raise ModelError(
            422,
            "invalid_bundle",
            f"the graph's inputs {[i.name for i in inputs]} are not [{manifest.onnx.input_name!r}]",
        )
    expected = [spec.channels, spec.height, spec.width]
    shape = list(inputs[0].shape)[1:]
    if len(shape) != 3 or any(
        isinstance(d, int) and d != e for d, e in zip(shape, expected, strict=True)
    ):
        raise ModelError(
            422,
            "invalid_bundle",
            f"the graph's input shape {inputs[0].shape} does not fit {expected}",
        )
    outputs = {o.name for o in session.get_outputs()}
    missing = [name for name in [*manifest.scores, ERROR_MAP_OUTPUT] if name not in outputs]
    if missing:
        raise ModelError(422, "invalid_bundle", f"the graph lacks the outputs {missing}")


class ModelHolder:
    """The current model, leases on it, and the reload lock."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: LoadedModel | None = None
        self.path: Path | None = settings.bundle  # what SIGHUP and a bare reload load
        self.not_ready = "the model is loading" if settings.bundle else "no bundle is configured"
        self.first_load = asyncio.Event()  # set once the start-up load has finished or failed
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- leases (event loop only) -----------------------------------------------------------

    def require(self) -> LoadedModel:
        """The current model, without a lease (for checks); 503 when there is none."""
        model = self.current
        if model is None:
            raise ModelError(503, "not_ready", self.not_ready)
        if model.batcher.failed:
            raise ModelError(
                503, "not_ready", "the inference thread stopped (see the log); reload the model"
            )
        return model

    def acquire(self) -> LoadedModel:
        """The current model with a lease: it stays usable until `release`, even if swapped."""
        model = self.require()
        model.leases += 1
        return model

    def release(self, model: LoadedModel) -> None:
        model.leases -= 1
        if model.retired and model.leases == 0:
            self._retire(model)

    # -- loading ------------------------------------------------------------------------------

    def resolve(self, requested: str | None) -> Path:
        """The bundle a reload should load: the current one, or `requested` inside the root."""
        if requested is None:
            if self.path is None:
                raise ModelError(422, "invalid_request", "no bundle is configured; name one")
            return self.path
        root = self.settings.reload_root
        candidate = Path(requested)
        if root is None:
            raise ModelError(403, "bundle_path_forbidden", "no models directory is configured")
        if not candidate.is_absolute():
            candidate = root / candidate
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root):
            raise ModelError(
                403,
                "bundle_path_forbidden",
                f"{requested} is outside the models directory {root}; reload only loads from there",
            )
        if not resolved.is_dir():
            raise ModelError(404, "bundle_not_found", f"{requested} is not a bundle directory")
        return candidate

    async def load(self, path: Path, *, reload: bool = True) -> LoadedModel:
        """Load, validate and warm `path`, then make it the current model.

        On failure the current model (if any) stays and `ModelError` says why.
        """
        async with self._lock:
            try:
                model = await asyncio.to_thread(load_model, path, self.settings, self.metrics)
            except ModelError as exc:
                self._failed(path, exc.message, reload)
                raise
            except Exception as exc:
                log.exception("loading %s failed unexpectedly", path)
                self._failed(path, f"loading failed: {exc}", reload)
                raise ModelError(500, "internal_error", f"loading {path} failed: {exc}") from exc
            model.batcher.start()
            old, self.current = self.current, model
            self.path = path
            self.metrics.model_loaded(
                model.info_labels(),
                model.target_fpr,
                model.judge.verdict_scores,
                model.buckets(),
            )
            if reload:
                self.metrics.reload_finished(True)
            if old is not None:
                old.retired = True
                if old.leases == 0:
                    self._retire(old)
            return model

    def _failed(self, path: Path, message: str, reload: bool) -> None:
        if reload:
            self.metrics.reload_finished(False)
        if self.current is None:
            self.not_ready = f"no model: loading {path} failed: {message}"
        log.error(
            "loading %s failed%s: %s",
            path,
            "; keeping the current model" if self.current else "",
            message,
        )

    def _retire(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(model.batcher.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Shutdown: stop serving, finish queued images, close every batcher."""
        model, self.current = self.current, None
        self.not_ready = "shutting down"
        self.metrics.ready.set(0)
        if model is not None:
            model.retired = True
            await model.batcher.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
