"""File locks (``filelock``): the one place export and runtime code takes a lock.

A lock is a file beside what it guards (``.<name>.lock``). The kernel drops it when its holder dies,
so a killed export never leaves a lock behind; what a killed holder leaves is swept by the next
holder (see :mod:`varrt.export.staging`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from varrt.export.artifact import ArtifactError


def lock_file(path: Path) -> Path:
    """The lock that guards ``path``: ``.<name>.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _lock(guarded: Path) -> FileLock:
    lf = lock_file(guarded)
    try:
        lf.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(lf.parent, e) from None
    return FileLock(str(lf))


def _unwritable(where: Path, e: OSError) -> ArtifactError:
    if e.errno == errno.ENOSPC:
        from varrt.export.artifact import DiskFullError

        return DiskFullError(f"the disk is full: no space left in {where}; free space there or set VARRT_CACHE")
    return ArtifactError(
        f"cannot write to {where} ({os.strerror(e.errno) if e.errno else e}); "
        "choose another --out or set VARRT_CACHE to a writable folder"
    )


@contextlib.contextmanager
def held(guarded: Path, what: str, say: Callable[[str], None] = lambda _m: None) -> Iterator[None]:
    """Hold the lock of ``guarded`` for the block; if another process holds it, say so and wait."""
    lock = _lock(guarded)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            say(f"waiting for another process ({what}: {guarded})")
            lock.acquire()
    except OSError as e:  # the lock file cannot be created: a read-only folder, a full disk
        raise _unwritable(Path(guarded).parent, e) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def held_if_free(guarded: Path) -> Iterator[bool]:
    """Take the lock of ``guarded`` only if nobody holds it; yields whether it was taken."""
    lock = FileLock(str(lock_file(guarded)))
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
