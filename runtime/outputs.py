"""Where results go: checked before any work, written whole, and a failed write said in one line.

Every file varrt writes for a user (images, grids, reports, plots) is written under a temporary
name in its target folder and renamed into place, so a crash, a full disk or Ctrl-C never leaves a
half-written file under the real name, and the temporary is removed when the write fails. The
checks run before generation: an output that cannot be written must not cost minutes of work first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path


class OutputError(ValueError):
    """An output that cannot be written: the message names the path, the reason and the fix."""


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path, what: str, target: Path) -> None:
    if not folder.is_dir():
        raise OutputError(f"{what} {target}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        ro = hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY
        reason = "is on a read-only file system" if ro else "is not writable (permission denied)"
        raise OutputError(f"{what} {target}: {folder} {reason}; choose another {what}")


def check_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """A folder that exists and is writable, or can be created: checked, not created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file; give a folder")
    _writable(_existing_ancestor(p), what, p)
    return p


def check_file(path: str | os.PathLike, what: str = "output file", suffixes: Sequence[str] = ()) -> Path:
    """A file name whose folder is writable (or can be created), that is not a folder itself."""
    p = Path(path)
    if p.is_dir():
        example = p / ("out" + (suffixes[0] if suffixes else ""))
        raise OutputError(f"{what} {p} is a folder; give a file name (e.g. {example})")
    if suffixes and p.suffix.lower() not in suffixes:
        raise OutputError(f"{what} {p}: give a {' or '.join(suffixes)} file name")
    _writable(_existing_ancestor(p.parent), what, p)
    return p


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_files(writers: Sequence[tuple[Path, Callable[[Path], None]]]) -> list[Path]:
    """Write every (path, write(tmp)) to temporary names, then rename them all into place: a failed
    write leaves none of them (and no temporary) behind."""
    done: list[tuple[Path, Path]] = []
    made: list[Path] = []  # folders this call created, removed again if it fails
    try:
        for path, write in writers:
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made += reversed(missing)
            tmp = _temporary(path)
            done.append((tmp, path))
            write(tmp)
    except BaseException as e:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError):
            raise OutputError(describe_os_error(e, done[-1][1] if done else None)) from None
        raise
    for tmp, path in done:
        os.replace(tmp, path)
    return [path for _, path in done]


def write_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    return write_files([(Path(path), write)])[0]


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text))


def _mount_point(path: Path) -> Path:
    p = _existing_ancestor(path)
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def describe_os_error(e: OSError, where: str | os.PathLike | None = None) -> str:
    """One line for a failed file operation: what, where, and for a full disk how full and which disk."""
    target = Path(where) if where is not None else (Path(e.filename) if e.filename else None)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        if target is None:
            return "the disk is full (no space left on device); free some space and run again"
        mount = _mount_point(target)
        usage = shutil.disk_usage(mount)
        return (
            f"the disk is full: no space left to write {target} ({usage.free / 2**20:.1f} MiB free of "
            f"{usage.total / 2**20:.1f} MiB on the file system mounted at {mount}); free some space there or "
            "write somewhere else"
        )
    reason = e.strerror or str(e)
    return f"{reason}: {target}" if target is not None else reason
