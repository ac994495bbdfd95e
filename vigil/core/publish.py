"""Publishing a directory at once: a reader sees the old bundle or the new one, never half.

`vigil train` and `vigil calibrate --out` write the whole new bundle (graphs, manifest,
history, evaluation, report) into a hidden folder beside its destination, then put it in
place in one step. Interrupted (Ctrl-C, SIGTERM) or failing (a full disk) before that
step, they remove the hidden folder and the destination keeps the bundle it had; after it,
the destination holds the complete new bundle. The service, which may be told to reload
the destination at any moment, never finds a half-written one there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vigil.core.errors import VigilError
from vigil.core.interrupts import sigterm_deferred, sigterm_interrupts

PARTIAL = ".partial-"  # staging folders are named .<destination>.partial-<random>
RENAME_EXCHANGE = 2  # linux/fs.h: swap the two paths atomically
AT_FDCWD = -100


class NotReplaceable(VigilError):
    """The destination holds something else than what would replace it."""

    code = "not_replaceable"


def check_replaceable(out: Path, marker: str) -> None:
    """Refuse a destination that exists and is neither empty nor holds `marker` (a bundle's
    manifest): replacing it would delete someone's folder (`--out ~` by mistake)."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise NotReplaceable(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and not (out / marker).is_file() and any(out.iterdir()):
        raise NotReplaceable(
            f"{out} is a folder with other things than a bundle in it (no {marker}); "
            "refusing to replace it: choose another --out"
        )


@contextmanager
def staged(out: Path, marker: str) -> Iterator[Path]:
    """An empty hidden folder beside `out` to write into; published at `out` when the block
    ends normally, removed (leaving `out` as it was) when it raises or is interrupted.

    `out` must be absent, empty or hold `marker` (see `check_replaceable`)."""
    out = Path(out)
    check_replaceable(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}", dir=out.parent))
    with sigterm_interrupts():
        try:
            yield staging
            # mkdtemp made it 0700: give it the mode any new folder gets (the umask's), so
            # a service running as another user (a container's) can read the bundle.
            staging.chmod(0o777 & ~_umask())
            _sync_tree(staging)
            check_replaceable(out, marker)  # again: it may have changed meanwhile
            publish(staging, out)
        finally:
            # After a publish this is the previous bundle, swapped out; else the unfinished
            # one. A SIGTERM meanwhile waits for it to go, then interrupts as before.
            with sigterm_deferred():
                shutil.rmtree(staging, ignore_errors=True)


def publish(new: Path, out: Path) -> None:
    """Put the folder `new` at `out` in one step; the previous `out`, if any, ends at `new`.

    `out` absent: one rename. `out` present: renameat2(RENAME_EXCHANGE) swaps the two
    atomically (Linux 3.15+, on ext4, xfs, btrfs, tmpfs and overlayfs); where that is
    unavailable, two renames, with a moment in between in which `out` does not exist (a
    reload then fails with bundle_not_found and the service keeps its model).
    """
    if not out.exists() and not out.is_symlink():
        os.rename(new, out)
    elif not _exchange(new, out):
        old = new.with_name(new.name + "-old")
        os.rename(out, old)
        os.rename(new, out)
        os.rename(old, new)
    _sync_dir(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    done = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return bool(done == 0)


def _sync_tree(folder: Path) -> None:
    """Flush the staged files to disk, so a power cut after the publish finds them whole."""
    for root, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(Path(root))


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
