"""ONNX Runtime sessions for a bundle's graph: created on purpose, checked, and run in batches."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vigil.core.bundle import RECONSTRUCTION_IMAGE_OUTPUT, BundleError, Manifest
from vigil.core.errors import VigilError

log = logging.getLogger("vigil.runtime")


class ProviderError(VigilError, RuntimeError):
    """A required execution provider is not the one the session actually runs on."""

    code = "provider_unavailable"


def create_session(
    model: Path | bytes,
    providers: Sequence[str] = ("CUDAExecutionProvider", "CPUExecutionProvider"),
    intra_op_threads: int = 0,
    require: str | None = None,
    allow_spinning: bool = True,
) -> ort.InferenceSession:
    """A session on the first available provider of `providers`.

    onnxruntime-gpu lists CUDA as available even without a usable GPU and then quietly
    runs on CPU, so the providers the session really got are checked after creation.
    `allow_spinning=False` stops idle intra-op threads from busy-waiting between runs: the
    service wants that CPU for its event loop.
    """
    available = set(ort.get_available_providers())
    wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in wanted:
        _preload_cuda()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads  # 0 = one per physical core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)  # a file, or the graph itself
    session = ort.InferenceSession(source, sess_options=options, providers=wanted)
    actual = session.get_providers()
    log.info("ONNX Runtime session on %s (asked for %s)", actual[0], list(providers))
    if require and actual[0] != require:
        raise ProviderError(f"{require} is required but the session runs on {actual[0]}")
    return session


@functools.cache
def _preload_cuda() -> None:
    """Load CUDA and cuDNN from NVIDIA's PyPI wheels, where `pip install vigil[gpu]` put them.

    Without it (onnxruntime-gpu >= 1.21 no longer finds them by itself outside an image
    that registers them with ldconfig) the CUDA provider fails to load and the session
    quietly falls back to the CPU.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # libraries absent or broken: the provider check reports it
        log.warning("could not preload the CUDA libraries: %s", exc)


def check_graph(session: ort.InferenceSession, manifest: Manifest) -> None:
    """`BundleError` unless the graph takes the manifest's input and computes its scores."""
    inputs = session.get_inputs()
    spec = manifest.input
    if len(inputs) != 1 or inputs[0].name != manifest.onnx.input_name:
        names = [i.name for i in inputs]
        raise BundleError(f"the graph's inputs {names} are not [{manifest.onnx.input_name!r}]")
    expected = [spec.channels, spec.height, spec.width]
    shape = list(inputs[0].shape)[1:]
    if len(shape) != 3 or any(
        isinstance(d, int) and d != e for d, e in zip(shape, expected, strict=True)
    ):
        raise BundleError(f"the graph's input shape {inputs[0].shape} does not fit {expected}")
    outputs = {o.name for o in session.get_outputs()}
    wanted = [*manifest.scores, manifest.heatmap_output(), RECONSTRUCTION_IMAGE_OUTPUT]
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise BundleError(f"the graph lacks the outputs {missing}")


def run(
    session: ort.InferenceSession, images: np.ndarray, outputs: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Run one batch [N, C, H, W] float32; returns the named outputs."""
    names = list(outputs) if outputs else [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: images})
    return dict(zip(names, values, strict=True))


def run_batched(
    session: ort.InferenceSession,
    images: np.ndarray,
    batch_size: int = 256,
    outputs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run many images in batches and concatenate the named outputs."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        for name, value in run(session, batch, outputs).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}
