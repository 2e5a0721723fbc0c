"""What ``$VARRT_CACHE`` holds and how much disk it takes (``varrt cache list|du|clean``).

    exports/<key>/    artifacts: a manifest, the quantizer and a log; their graphs and weights are a pack's
    packs/<key>/      one per checkpoint, precision, opset and tool versions: traced graphs + weights, once
    engines/          TensorRT engines;  timing/: TensorRT timing caches;  hashes.json: the hash memory

Sizes count every file once, by inode. An artifact in the cache references its pack's graphs and
weights.bin instead of holding copies, so two artifacts of one checkpoint (two batch sizes, two
policy sets) show the weights once, under the pack.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from varrt.export.artifact import (
    MANIFEST,
    WEIGHTS,
    FormatError,
    artifact_file,
    cache_dir,
    parity_state,
    read_manifest,
)
from varrt.export.locks import held_if_free
from varrt.export.pack import INDEX
from varrt.export.staging import leftovers_in, sweep_folder

Say = Callable[[str], None]


@dataclass
class Entry:
    """One artifact or pack: where, what, when, which inodes."""

    kind: str  # "export" | "pack"
    path: Path
    label: str
    detail: str
    created: float  # seconds since the epoch: creation, or the last reuse of an artifact
    inodes: dict[tuple[int, int], int] = field(default_factory=dict)  # (dev, ino) -> bytes on disk
    pack: Path | None = None  # a pack: its folder; an artifact: the pack it references (if any)

    @property
    def name(self) -> str:
        return self.path.name


def _inodes(path: Path) -> dict[tuple[int, int], int]:
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


def _export_entry(d: Path) -> Entry:
    pack = None
    try:
        m = read_manifest(d)
        plans = ", ".join(dict.fromkeys(p["name"] for p in m.plans))
        detail = f"batch {m.batch}, {m.precision}, plans {plans}; parity {parity_state(m)}"
        label = m.label
        if m.files[WEIGHTS].get("shared"):
            pack = artifact_file(d, m, WEIGHTS).resolve().parent
    except FormatError as e:
        label, detail = "?", f"unusable: {e.found} (re-export replaces it)"
    except (ValueError, KeyError) as e:
        label, detail = "?", f"unusable: {str(e).splitlines()[0]}"
    stamp = d / MANIFEST
    created = (stamp if stamp.exists() else d).stat().st_mtime
    return Entry("export", d, label, detail, created, _inodes(d), pack)


def _pack_entry(d: Path) -> Entry:
    try:
        index = json.loads((d / INDEX).read_text())
        comps = ", ".join(sorted(index.get("components", {})))
        source = index.get("identity", {}).get("source", {})
        label = ", ".join(f"{k}: {_checkpoint(v)}" for k, v in source.items()) or "?"
        detail = f"{index.get('identity', {}).get('precision', '?')}; components {comps or 'none'}"
    except (OSError, json.JSONDecodeError, AttributeError):
        label, detail = "?", "no readable pack.json"
    created = d.stat().st_mtime
    return Entry("pack", d, label, detail, created, _inodes(d), d.resolve())


def _checkpoint(source: dict) -> str:
    """One checkpoint of a pack's source, in a few words: its model, file name or content hash
    (the bundled demo model is recorded by its hash only)."""
    if source.get("model"):
        return str(source["model"])
    if source.get("path"):
        return Path(source["path"]).name
    return f"sha256 {source['sha256'][:12]}" if source.get("sha256") else "?"


def _dirs(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def entries(root: Path | None = None) -> list[Entry]:
    """Every artifact under exports/ and every pack under packs/."""
    root = root or cache_dir()
    found = [*map(_export_entry, _dirs(root / "exports")), *map(_pack_entry, _dirs(root / "packs"))]
    for p in found:  # a pack is named by the models of the artifacts that use it, where there are any
        names = dict.fromkeys(u.label for u in users(p, found) if u.label != "?")
        if p.kind == "pack" and names:
            p.label = ", ".join(names)
    return found


def users(pack: Entry, all_entries: list[Entry]) -> list[Entry]:
    """The artifacts in the cache that reference this pack's graphs and weights."""
    return [e for e in all_entries if e.kind == "export" and e.pack is not None and e.pack == pack.pack]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def age(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Usage:
    """Disk use by kind, every inode counted once (under the first kind that holds it)."""

    rows: list[tuple[str, int, int, str]]  # kind, count, bytes, note
    total: int


def usage(root: Path | None = None) -> Usage:
    root = root or cache_dir()
    all_entries = entries(root)
    seen: set[tuple[int, int]] = set()

    def once(inodes: dict[tuple[int, int], int]) -> int:
        fresh = {k: v for k, v in inodes.items() if k not in seen}
        seen.update(fresh)
        return sum(fresh.values())

    rows = []
    packs = [e for e in all_entries if e.kind == "pack"]
    exports = [e for e in all_entries if e.kind == "export"]
    for p in packs:
        n = users(p, all_entries)
        rows.append(
            (f"pack {p.name}", 1, once(p.inodes), f"{p.label}; weights stored once, used by {len(n)} artifacts")
        )
    own = sum(once(e.inodes) for e in exports)
    linked = sum(1 for e in exports if e.pack is not None)
    rows.append(("exports", len(exports), own, f"their own files ({linked} reference a pack's graphs and weights)"))
    engines = list(_dirs(root / "engines"))
    rows.append(("engines", len(engines), once(_inodes(root / "engines")), "TensorRT engines"))
    rows.append(("timing", len(_inodes(root / "timing")), once(_inodes(root / "timing")), "TensorRT timing caches"))
    stale = [
        p for folder in (root / "exports", *_dirs(root / "packs")) for ps in leftovers_in(folder).values() for p in ps
    ]
    rows.append(
        ("leftovers", len(stale), sum(once(_inodes(p)) for p in stale), "staging of exports that did not finish")
    )
    return Usage(rows, sum(r[2] for r in rows))


def clean(older_than_days: float | None = None, root: Path | None = None, say: Say = lambda _m: None) -> int:
    """Remove artifacts (all, or those not created or reused for ``older_than_days``), then the packs
    that no artifact in the cache references any more (an ``--out`` artifact holds its own copy),
    then what killed exports left. Artifacts and packs in use by an
    export (their lock is held) are kept. Returns the bytes freed."""
    root = root or cache_dir()
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    freed = 0
    for e in entries(root):
        if e.kind != "export" or (cutoff is not None and e.created >= cutoff):
            continue
        with held_if_free(e.path) as mine:
            if not mine:
                say(f"kept {e.path} (an export holds it)")
                continue
            size = sum(e.inodes.values())
            shutil.rmtree(e.path, ignore_errors=True)
            freed += size
            say(f"removed {e.path} ({e.label}; {mib(size)} of its own)")
    left = entries(root)
    for p in (e for e in left if e.kind == "pack"):
        if users(p, left):
            continue
        with held_if_free(p.path / WEIGHTS) as mine:
            if mine:
                size = sum(p.inodes.values())
                shutil.rmtree(p.path, ignore_errors=True)
                freed += size
                say(f"removed pack {p.path} ({mib(size)}: no artifact in the cache references it)")
    for folder in (root / "exports", *_dirs(root / "packs")):
        freed += sweep_folder(folder, say)
    return freed
