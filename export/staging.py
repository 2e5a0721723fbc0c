"""Where an artifact is assembled, how it is published whole, and the sweep of what killed exports left.

An export of ``<dir>/<name>`` holds the lock ``<dir>/.<name>.lock`` (:mod:`varrt.export.locks`) from
before it starts until the artifact is renamed into place, and works in
``<dir>/.<name>.staging-<pid>-<random>``. So whoever holds the lock owns every staging folder of that
name: those it did not make were left by a process that died (the kernel dropped its lock) and are
removed. A replaced artifact is parked as ``.<name>.old-<pid>`` for the moment of the swap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from varrt.export.artifact import MANIFEST, ArtifactError, DiskFullError

Say = Callable[[str], None]
#: what an export leaves beside ``<name>`` while it runs: staging folders, a parked old artifact,
#: and varrt 0.1's mkdtemp staging folders (``.<name>.<8 random characters>``)
_KINDS = r"(staging-.+|old-\d+|[a-z0-9_]{8})"


def staging_dir(out: Path) -> Path:
    """A fresh folder beside ``out`` for the caller, who holds ``out``'s lock."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))


def leftovers(out: Path) -> list[Path]:
    """The staging and parked folders of ``out`` in its folder (whoever holds its lock owns them)."""
    return leftovers_in(out.parent).get(out.name, [])


def leftovers_in(folder: Path) -> dict[str, list[Path]]:
    """Every staging and parked folder in ``folder``, by the name of the artifact they are for."""
    pattern = re.compile(rf"^\.(.+)\.{_KINDS}$")
    found: dict[str, list[Path]] = {}
    try:
        for p in sorted(folder.iterdir()):
            m = pattern.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                found.setdefault(m[1], []).append(p)
    except OSError:
        pass
    return found


def sweep_leftovers(out: Path, say: Say = lambda _m: None) -> int:
    """Remove what killed exports of ``out`` left beside it; the caller holds ``out``'s lock, so no
    live export owns any of it. Returns the bytes freed."""
    freed = 0
    for p in leftovers(out):
        size = tree_bytes(p)
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            freed += size
            say(f"removed {p.name} ({size / 2**20:.1f} MiB), left by an export that did not finish")
    return freed


def sweep_folder(folder: Path, say: Say = lambda _m: None) -> int:
    """Sweep the leftovers of every name in ``folder`` whose lock is free (its export is gone)."""
    from varrt.export.locks import held_if_free

    freed = 0
    for name in leftovers_in(folder):
        with held_if_free(folder / name) as mine:
            if mine:
                freed += sweep_leftovers(folder / name, say)
    return freed


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def check_out(out: Path) -> None:
    """Fail now, before minutes of export, on an ``out`` that cannot become this artifact."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file; --out takes a folder for the artifact (choose another path)")
    if out.is_dir() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise ArtifactError(f"{out} exists and is not a varrt artifact; choose another --out or empty it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArtifactError(f"cannot create {out}: {parent} is a file, not a folder")


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """A full disk or a read-only folder during an export becomes one line that names the folder."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(
                f"the disk is full: no space left writing {e.filename or where}; "
                "free space there (or set VARRT_CACHE / --out to a larger disk) and export again"
            ) from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ArtifactError(
                f"cannot write {e.filename or where} ({os.strerror(e.errno)}); "
                "choose another --out or set VARRT_CACHE to a writable folder"
            ) from None
        raise


def publish(work: Path, out: Path) -> None:
    """Make the finished, validated artifact readable by all (mkdtemp makes owner-only folders; an
    artifact is meant to be shared) and swap it into place in one rename."""
    os.chmod(work, 0o755)
    for f in work.iterdir():
        os.chmod(f, 0o644)
    old = None
    if out.exists():
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise ArtifactError(f"{out} exists and is not a varrt artifact; choose another --out or empty it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
