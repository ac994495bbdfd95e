"""`vigil score`: score image files or arrays offline into a Parquet file, on this machine
or on a Ray cluster (`--ray`), with the service's preprocessing, graph and verdicts."""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vigil.batch import inputs
from vigil.batch.local import LocalJob, default_workers, score_local
from vigil.batch.scoring import Model, Options, open_model
from vigil.batch.summary import Summary
from vigil.core.errors import VigilError
from vigil.core.interrupts import sigterm_interrupts
from vigil.service.settings import DEFAULT_PROVIDERS, Settings

LOCAL = "local"
# What --ray ADDRESS accepts; anything else after --ray is taken as an INPUT.
ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.-]+:\d+)$")
RayRunner = Callable[..., None]


def add_parser(
    sub: Any, formatter: type[argparse.HelpFormatter], ray_runner: Callable[[], RayRunner]
) -> None:
    p = sub.add_parser(
        "score",
        help="score images offline into a Parquet file (this machine, or a Ray cluster)",
        description=__doc__,
        formatter_class=formatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="folders (searched recursively), "
                   "globs, image files, IDX or .npy/.npz files, or text files listing paths")  # fmt: skip
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--out", required=True, help="the Parquet file to write (with --ray: a "
                   "folder of Parquet files; a URI such as s3://bucket/results works there)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--target-fpr", type=float, default=None,
                   help="target false-positive rate of the verdicts (default: the bundle's)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=Options.batch_size,
                   help="images per ONNX Runtime call (more on a GPU)")  # fmt: skip
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="local decode processes (0: decode in the main process)")  # fmt: skip
    pixels = Settings.model_fields["max_image_pixels"].default
    p.add_argument("--max-image-pixels", type=int, default=pixels,
                   help="width x height limit per image, as the service's")  # fmt: skip
    p.add_argument("--providers", default=DEFAULT_PROVIDERS,
                   help="ONNX Runtime execution providers in order of preference")  # fmt: skip
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="ONNX Runtime threads per session (0: one per physical core)")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is off anyway when stderr is not a terminal)")  # fmt: skip
    ray = p.add_argument_group("Ray (needs the ray extra)")
    ray.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                     help="run on a Ray cluster: ray://HOST:10001, HOST:6379 or auto; without "
                     "ADDRESS, the cluster in RAY_ADDRESS or else a local one on 127.0.0.1")  # fmt: skip
    ray.add_argument("--actors", type=int, default=2, help="scoring actors (one session each)")
    ray.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor")
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor")
    p.set_defaults(run=run, ray_runner=ray_runner)


def run(args: argparse.Namespace) -> int:
    _fix_ray_address(args)
    _check_args(args)
    out = args.out
    sources = inputs.resolve(args.inputs)
    options = Options(
        target_fpr=args.target_fpr,
        max_pixels=args.max_image_pixels,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
        intra_op_threads=args.intra_op_threads,
        batch_size=args.batch_size,
    )
    model = open_model(args.bundle, options)
    summary = Summary(model.target_fpr)
    started = time.perf_counter()
    with sigterm_interrupts():
        if args.ray is None:
            _local(args, model, sources, summary)
        else:
            runner = _load_ray(args)
            runner(args, model, sources, summary)
    summary.seconds = time.perf_counter() - started
    print(summary.text(out))
    return 0


def _local(
    args: argparse.Namespace, model: Model, sources: list[inputs.Source], summary: Summary
) -> None:
    if any(isinstance(s, inputs.Files) and s.kind == "uri" for s in sources):
        raise VigilError("object-storage inputs are read with --ray (Ray Data's filesystems)",
                         "invalid_request")  # fmt: skip
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise VigilError(f"{out} exists; pass --overwrite to replace it", "invalid_request")
    total = inputs.count(sources)
    job = LocalJob(out, args.workers, args.progress)
    score_local(job, model, sources, total, summary)


def _fix_ray_address(args: argparse.Namespace) -> None:
    """`--ray scans/` took an INPUT for an address: give it back and start a local cluster."""
    if args.ray is not None and not ADDRESS.match(args.ray):
        args.inputs.insert(0, args.ray)
        args.ray = LOCAL


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "actors"):
        if getattr(args, name) < 1:
            raise VigilError(f"--{name.replace('_', '-')} must be at least 1", "invalid_request")
    if args.workers < 0 or args.intra_op_threads < 0 or args.max_image_pixels < 1:
        raise VigilError("--workers and --intra-op-threads must be >= 0, --max-image-pixels "
                         ">= 1", "invalid_request")  # fmt: skip
    if args.cpus_per_actor <= 0 or args.gpus_per_actor < 0:
        raise VigilError("--cpus-per-actor must be > 0 and --gpus-per-actor >= 0",
                         "invalid_request")  # fmt: skip


# The local cluster's settings (`--ray` with no cluster to join; the tests' cluster too).
# Ray reads them when it is imported or starts its processes: they are set before, and a
# value already in the environment wins.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the head binds 127.0.0.1, not the LAN address
    "RAY_USAGE_STATS_ENABLED": "0",
    # No memory monitor: when the machine's memory is >= 95 % used, by whatever process,
    # Ray kills its own workers (the scoring actors, Ray Data's internal actors) and retries
    # them forever, so the job hangs. The job's memory is bounded (batches of bounded
    # images); the kernel's OOM killer still guards the machine.
    "RAY_memory_monitor_refresh_ms": "0",
}


def _load_ray(args: argparse.Namespace) -> RayRunner:
    """Ray's runner, importing Ray; a local cluster binds 127.0.0.1 only."""
    if args.ray == LOCAL and "RAY_ADDRESS" not in os.environ:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    try:
        runner: RayRunner = args.ray_runner()
    except ModuleNotFoundError as exc:
        if exc.name != "ray" and not (exc.name or "").startswith("ray."):
            raise
        raise VigilError("--ray needs Ray Data, from the ray extra: pip install -e "
                         "'.[ray,cpu]' (or pip install 'ray[data]')", "missing_extra") from exc  # fmt: skip
    return runner
