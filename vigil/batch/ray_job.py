"""`vigil score --ray`: the same job on a Ray cluster, with Ray Data.

`read_binary_files` reads the files as bytes with their paths; `map_batches` hands
batches to a pool of `ScoreActor`s (`ActorPoolStrategy`), each holding one ONNX Runtime
session and running `scoring.score`, the local path's code; `write_parquet` writes the
rows. The driver validates the bundle and ships the manifest and graph to the actors as
bytes, so workers need no copy of the bundle; they need the input files (shared storage
or object storage).

`--out` is a folder of Parquet files (one dataset). A local `--out` is written as
`.NAME.partial-PID` and renamed when complete; a URI (s3://...) is written in place.

A scoring actor whose process dies (a crash in a native decoder or in ONNX Runtime on some
file, the kernel's OOM killer) is restarted and its batch retried at most RETRIES times,
not forever as Ray Data would: a batch that kills every worker fails the job with one
line instead of hanging it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import ray.data.exceptions

from vigil.batch import inputs
from vigil.batch.decoding import decode, read_files
from vigil.batch.local import default_workers, partial_path
from vigil.batch.scoring import Model, Options, open_model_bytes, schema, score
from vigil.batch.summary import Summary
from vigil.core.errors import VigilError
from vigil.core.readers import IMAGE_SUFFIXES

# CPUs reserved per read or write task: they wait on storage, the actors do the work. With
# the default of 1, actors holding every CPU would starve them (the job would hang).
IO_CPUS = 0.25
# Restarts of a scoring actor, and retries of its calls, after its process died.
RETRIES = 3


class ScoreActor:
    """One ONNX Runtime session per actor; each call scores one batch of files."""

    def __init__(self, manifest_json: str, onnx: bytes, options: Options) -> None:
        self.model = open_model_bytes(manifest_json, onnx, options)
        self.schema = schema(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        decoded = decode(
            paths,
            list(batch["bytes"]),
            self.model.manifest.frame_spec(),
            self.model.options.max_pixels,
        )
        return score(self.model, decoded, self.schema)


def score_ray(
    args: argparse.Namespace, model: Model, sources: list[inputs.Source], summary: Summary
) -> None:
    """Score `sources` on the cluster into the folder `args.out`, counting rows into `summary`."""
    files = [s for s in sources if isinstance(s, inputs.Files)]
    if len(files) < len(sources):
        raise VigilError("--ray reads image files; score IDX and .npy/.npz inputs without --ray",
                         "invalid_request")  # fmt: skip
    out, local = args.out, not inputs.URI.match(args.out)
    if local and Path(out).exists() and not args.overwrite:
        raise VigilError(f"{out} exists; pass --overwrite to replace it", "invalid_request")
    if local:
        inputs.count(sources)  # a clear error for an empty input before the cluster starts
    _connect(args)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = args.progress
    logging.getLogger("ray.data").setLevel(logging.INFO if args.progress else logging.WARNING)
    target = str(partial_path(Path(out))) if local else out
    # An actor's ONNX Runtime threads: the CPUs it holds, unless told.
    threads = args.intra_op_threads or max(1, int(args.cpus_per_actor))
    options = dataclasses.replace(model.options, intra_op_threads=threads)
    try:
        with warnings.catch_warnings():
            # Ray 2.60 deprecates map_batches' **ray_remote_args (for 2.64) and names no
            # replacement for max_restarts / max_task_retries yet; the tests see a change.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
            scored = _dataset(files).map_batches(
                ScoreActor,
                fn_constructor_args=(
                    model.manifest.model_dump_json(),
                    _graph(args, model),
                    options,
                ),
                compute=ray.data.ActorPoolStrategy(size=args.actors),
                batch_size=model.group,
                batch_format="numpy",
                num_cpus=args.cpus_per_actor,
                num_gpus=args.gpus_per_actor,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )
        scored.write_parquet(target, schema=schema(model), ray_remote_args={"num_cpus": IO_CPUS})
        if local:
            _publish(Path(target), Path(out))
    except BaseException as exc:
        if local:
            shutil.rmtree(target, ignore_errors=True)
        if _job_failure(exc):
            raise VigilError(f"the Ray job failed: {_first_line(exc)}", "ray_job_failed") from exc
        raise
    summary.add(pq.read_table(out, columns=["is_anomaly", "error"]))


# Ray's own failures: workers or actors that died, and (Ray Data >= 2.5x) an execution in
# which nothing progressed for DataContext.execution_no_progress_timeout_s (30 min).
_STALLED = getattr(ray.data.exceptions, "ExecutionTimeoutError", None)
_FAILURES: tuple[type[BaseException], ...] = (ray.exceptions.RayError,) + (
    (_STALLED,) if _STALLED else ()
)


def _job_failure(exc: BaseException) -> bool:
    """A failure of the job that a user acts on from one line; an error raised by vigil's
    own code on the workers keeps its traceback."""
    return isinstance(exc, _FAILURES) and not isinstance(exc, ray.exceptions.UserCodeException)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _graph(args: argparse.Namespace, model: Model) -> bytes:
    """The ONNX file the driver validated (the actors check its sha256 again)."""
    return (Path(args.bundle) / model.manifest.onnx.file).read_bytes()


def _connect(args: argparse.Namespace) -> None:
    """Join the cluster at --ray ADDRESS (or RAY_ADDRESS), or start a local one (unless this
    process is connected already)."""
    if ray.is_initialized():
        return
    # ray.init replaces the SIGTERM handler with its own (sys.exit(15), and Ray's C++
    # handler prints a stack): keep vigil's, which cleans up and exits 130 like Ctrl-C.
    main = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if args.ray != "local" or "RAY_ADDRESS" in os.environ:
            address = None if args.ray == "local" else args.ray
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # Logical CPUs: the actors' and one more, so that reads and writes always fit.
            cpus = max(default_workers(), math.ceil(args.actors * args.cpus_per_actor)) + 1
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise VigilError(
            f"cannot reach the Ray cluster at {args.ray}: {exc}", "ray_unavailable"
        ) from exc
    finally:
        if on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)


def _dataset(files: list[inputs.Files]) -> ray.data.Dataset:
    """Rows of `bytes` and `path`. Folders and URIs are listed by Ray (image suffixes only);
    files named one by one (lists, globs) are read by tasks that turn a missing or unreadable
    file into a row with no bytes, as the local path does, rather than failing the job."""
    listed = [
        f.given if f.kind == "uri" else os.path.abspath(f.given)
        for f in files
        if f.kind in ("folder", "uri")
    ]
    named = [path for f in files if f.kind not in ("folder", "uri") for path in f.paths()]
    parts = []
    if listed:
        suffixes = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)
        parts.append(
            ray.data.read_binary_files(
                listed, include_paths=True, file_extensions=suffixes, num_cpus=IO_CPUS
            )
        )
    if named:
        paths = ray.data.from_items([{"path": path} for path in named])
        parts.append(paths.map_batches(_read, batch_format="pyarrow", num_cpus=IO_CPUS))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


FILE_ROWS = pa.schema([("bytes", pa.binary()), ("path", pa.string())])


def _read(batch: pa.Table) -> pa.Table:
    paths = batch["path"].to_pylist()
    return pa.Table.from_pydict({"bytes": read_files(paths), "path": paths}, schema=FILE_ROWS)


def _publish(partial: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    partial.replace(out)
