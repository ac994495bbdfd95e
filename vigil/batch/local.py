"""`vigil score` on one machine: decode on every core, score in large ONNX Runtime batches,
stream the rows into one Parquet file.

Decode workers (processes: Pillow's Python work holds the GIL) read and preprocess chunks
of files; the main process gathers groups of 1024 inputs, runs the graph on them
`--batch-size` at a time, judges them, and appends the rows. At most `4 x workers` chunks are in flight and rows are written in row
groups as they come, so memory stays bounded whatever the number of images; rows keep
the input order.

The file is written as `.NAME.partial-PID` beside `--out` and renamed to `--out` when
complete: `--out` never holds half a result. Ctrl-C or SIGTERM removes the partial file;
a killed process (SIGKILL, power loss) leaves it behind, safe to delete.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from vigil.batch import decoding
from vigil.batch.decoding import Decoded
from vigil.batch.inputs import Arrays, Source
from vigil.batch.scoring import Model, schema, score
from vigil.batch.summary import Summary
from vigil.core.bundle import InputSpec

CHUNK = 64  # images per decode task
ROW_GROUP = 65_536  # rows per Parquet row group


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LocalJob:
    out: Path
    workers: int = field(default_factory=default_workers)  # 0: decode in this process
    progress: bool = True


def partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def score_local(
    job: LocalJob, model: Model, sources: list[Source], total: int | None, summary: Summary
) -> None:
    """Score every source into `job.out`, counting the rows into `summary`."""
    partial = partial_path(job.out)
    out_schema = schema(model)
    try:
        with (
            _pool(job.workers, model.manifest.frame_spec(), model.options.max_pixels) as pool,
            pq.ParquetWriter(partial, out_schema) as writer,
            # disable=None: the bar turns itself off when stderr is not a terminal.
            tqdm(
                total=total, unit=" images", disable=None if job.progress else True, smoothing=0.1
            ) as bar,
        ):
            ready: list[pa.Table] = []
            rows = 0
            for table in _tables(model, out_schema, _decoded(pool, sources, job.workers)):
                summary.add(table)
                bar.update(table.num_rows)  # every group scored, not every row group written
                ready.append(table)
                rows += table.num_rows
                if rows >= ROW_GROUP:
                    writer.write_table(pa.concat_tables(ready), row_group_size=ROW_GROUP)
                    ready, rows = [], 0
            if ready:
                writer.write_table(pa.concat_tables(ready), row_group_size=ROW_GROUP)
        partial.replace(job.out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _tables(model: Model, out_schema: pa.Schema, decoded: Iterator[Decoded]) -> Iterator[pa.Table]:
    """Result tables of `model.group` inputs (the last one may be smaller), in input order."""
    pending: list[Decoded] = []
    waiting = 0
    for part in decoded:
        pending.append(part)
        waiting += len(part.paths)
        if waiting >= model.group:
            yield score(model, Decoded.concat(pending), out_schema)
            pending, waiting = [], 0
    if pending:
        yield score(model, Decoded.concat(pending), out_schema)


# ---------------------------------------------------------------- decoding, in parallel


class _Inline(Executor):
    """Decode in this process (workers = 0): for tests, debugging and tiny jobs."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _pool(workers: int, spec: InputSpec, max_pixels: int) -> Executor:
    init = (spec.model_dump_json(), max_pixels)
    if workers == 0:
        decoding.configure(*init)
        return _Inline()
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),  # no fork of ONNX Runtime's threads
        initializer=decoding.init_worker,
        initargs=(*init, os.getpid()),
    )


def _decoded(pool: Executor, sources: list[Source], workers: int) -> Iterator[Decoded]:
    """Decoded chunks in input order, with at most 4 x workers chunks in flight."""
    window: deque[Future[Decoded]] = deque()
    try:
        for fn, args in _tasks(sources):
            window.append(pool.submit(fn, *args))
            if len(window) >= 4 * max(workers, 1):
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()


def _tasks(sources: list[Source]) -> Iterator[tuple[Callable[..., Decoded], tuple[Any, ...]]]:
    for source in sources:
        if isinstance(source, Arrays):
            array = source.load()
            for start in range(0, len(array), CHUNK):
                part = array[start : start + CHUNK]
                names = [source.name(i) for i in range(start, start + len(part))]
                yield decoding.decode_arrays, (names, part)
        else:
            chunk: list[str] = []
            for path in source.paths():
                chunk.append(path)
                if len(chunk) == CHUNK:
                    yield decoding.decode_files, (chunk,)
                    chunk = []
            if chunk:
                yield decoding.decode_files, (chunk,)
