"""The component pack of one checkpoint: its traced component graphs and their weights, once, for
every artifact exported from it.

    $VARRT_CACHE/packs/<key>/        key: the checkpoints' contents, precision, opset, tool versions
      pack.json                      tensors (sha256 -> offset, length), components, weights.bin's length
      weights.bin                    every distinct tensor of every component, 64-byte aligned; append-only
      <component>[.<blocks>].onnx    each traced component, its initializers pointing into weights.bin
      <component>[.<blocks>].log     the exporter's log of that trace

A component graph depends on the weights, the precision, the opset, the tool versions and its block
structure (FastVAR's pruned range, a layer set), never on the batch or the plans: its dims are
symbolic. So an export of the same checkpoints for another batch or policy set traces only the
components the pack lacks, and its artifact hard-links the pack's weights.bin: the weights are
stored once, however many artifacts use them.

An artifact in the cache (``exports/<key>``) references the pack's graphs and weights.bin by relative
path and holds only its manifest and small files; an ``--out`` artifact gets its own graphs and a
weights.bin of the tensors they read, so it can be copied anywhere. (Hard links would share the
file too, but the ONNX checker refuses external data with several links: "hardlink attack".)

weights.bin only grows, so every artifact that references it keeps reading the bytes it recorded. Before
the pack serves an export, each tensor is checked against its sha256 (once per change of the file's
stat, which a write always moves); a pack that fails is discarded and rebuilt, and the artifacts that
linked it fail their own check and are re-exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from varrt.export.artifact import WEIGHTS, ArtifactError, _stat_key, atomic_write_text, cache_dir, file_sha256
from varrt.export.locks import held
from varrt.export.onnx_export import ALIGN, read_external, weight_bytes
from varrt.export.staging import sweep_leftovers

INDEX = "pack.json"
Say = Callable[[str], None]


def pack_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def packs_dir() -> Path:
    return cache_dir() / "packs"


def component_stem(component: str, blocks: tuple[int, ...] | None) -> str:
    """The pack's name for a component with its block structure (``transformer_fastvar.2-14``)."""
    return component if blocks is None else f"{component}.{'-'.join(map(str, blocks))}"


@dataclass(frozen=True)
class PackedComponent:
    stem: str
    sha256: str  # of the graph file
    weights_sha256: str  # of the sha256s of the tensors it reads, in order: what its weights are
    weight_bytes: int
    log: str


class Pack:
    """One checkpoint's pack (see the module docstring). Artifacts in the cache reference it
    (``shared``); an ``--out`` artifact gets its own copy of what it needs from it. ``root``
    elsewhere makes a private pack, used once (a direct ``export_artifact`` call)."""

    def __init__(self, root: Path, identity: dict | None = None, shared: bool = False) -> None:
        self.root = Path(root)
        self.identity = identity or {}
        self.shared = shared  # artifacts reference the pack's files instead of copying them

    @classmethod
    def for_identity(cls, identity: dict, shared: bool) -> Pack:
        return cls(packs_dir() / pack_key(identity)[:16], identity, shared)

    # -------------------------------------------------------------------------------- components
    def component(
        self, component: str, blocks: tuple[int, ...] | None, trace: Callable[[Path], str], say: Say
    ) -> PackedComponent:
        """The pack's graph of ``component``: traced by ``trace(path) -> log`` only if the pack lacks
        it. Two exports that need the same new component trace it once: the second waits."""
        stem = component_stem(component, blocks)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArtifactError(f"cannot create the component pack {self.root}: {e}") from None
        with held(self.root / stem, f"tracing {component}", say):
            sweep_leftovers(self.root / stem)
            with held(self.root / WEIGHTS, "the component pack"):
                found = self._intact_entry(self._index(say), stem)
            if found is not None:
                say(f"reuse {component} (traced before for these weights, {self.root})")
                return found
            say(f"export {component}")
            raw = Path(tempfile.mkdtemp(prefix=f".{stem}.staging-{os.getpid()}-", dir=self.root))
            try:
                log = trace(raw / f"{stem}.onnx")
                with held(self.root / WEIGHTS, "the component pack"):
                    return self._add(self._index(say), stem, raw / f"{stem}.onnx", log, component, blocks)
            finally:
                shutil.rmtree(raw, ignore_errors=True)

    def has(self, component: str, blocks: tuple[int, ...] | None, say: Say) -> bool:
        """Whether the pack holds an intact graph of ``component`` (a hint for what to trace ahead:
        :meth:`component` checks again under the component's lock)."""
        if not (self.root / INDEX).exists():
            return False
        with held(self.root / WEIGHTS, "the component pack"):
            return self._intact_entry(self._index(say), component_stem(component, blocks)) is not None

    def place(self, components: dict[str, PackedComponent], work: Path) -> tuple[dict[str, dict], dict]:
        """The manifest entries of ``components`` and of weights.bin for the artifact assembled in
        ``work`` (published beside it). A shared pack is referenced by relative paths: the artifact
        holds no graph or weight of its own. Otherwise the artifact gets its own graphs and a
        weights.bin of the tensors they read (self-contained: it can be copied anywhere)."""
        with held(self.root / WEIGHTS, "the component pack"):
            index = self._read()
            for entry in components.values():
                if index["components"].get(entry.stem, {}).get("sha256") != entry.sha256:
                    raise ArtifactError(f"the component pack {self.root} changed during the export; run it again")
            if not self.shared:
                return self._copy_into(components, work)
            rel = Path(os.path.relpath(self.root, work))
            length = index["bytes"]
            metas = {comp: _component_meta(str(rel / f"{e.stem}.onnx"), e.sha256, e) for comp, e in components.items()}
            weights = {
                "path": str(rel / WEIGHTS),
                "sha256": file_sha256(self.root / WEIGHTS, length=length),
                "bytes": length,
                "shared": True,
            }
            return metas, weights

    def _copy_into(self, components: dict[str, PackedComponent], work: Path) -> tuple[dict[str, dict], dict]:
        """Each component's graph into ``work``, its tensors into one new weights.bin, each once."""
        placed: dict[str, tuple[int, int]] = {}
        metas = {}
        with open(work / WEIGHTS, "wb") as w:
            for comp, entry in components.items():
                src = self.root / f"{entry.stem}.onnx"
                model = onnx.load(str(src), load_external_data=False)
                for t in _external(model):
                    data = read_external(src, t)
                    key = hashlib.sha256(data).hexdigest()
                    if key not in placed:
                        w.write(b"\0" * ((-w.tell()) % ALIGN))
                        placed[key] = (w.tell(), len(data))
                        w.write(data)
                    _point(t, *placed[key])
                onnx.save_model(model, str(work / f"{comp}.onnx"))
                metas[comp] = _component_meta(
                    f"{comp}.onnx", file_sha256(work / f"{comp}.onnx", use_cache=False), entry
                )
        weights = {"sha256": file_sha256(work / WEIGHTS, use_cache=False), "bytes": (work / WEIGHTS).stat().st_size}
        return metas, weights

    # -------------------------------------------------------------------------------- the index
    def _read(self) -> dict:
        try:
            index = json.loads((self.root / INDEX).read_text())
            if isinstance(index, dict) and {"bytes", "tensors", "components"} <= set(index):
                return index
        except (OSError, json.JSONDecodeError):
            pass
        return {"identity": self.identity, "bytes": 0, "tensors": {}, "components": {}}

    def _index(self, say: Say) -> dict:
        """The index, with weights.bin checked against it (the caller holds the pack lock): a tail
        past the recorded length (a killed append) is cut; any tensor that does not hash to its
        name discards the pack."""
        index = self._read()
        w = self.root / WEIGHTS
        size = w.stat().st_size if w.exists() else 0
        problem = None
        if size < index["bytes"]:
            problem = f"weights.bin has {size} bytes, the index {index['bytes']}"
        elif size > index["bytes"]:
            os.truncate(w, index["bytes"])
        if problem is None and index["bytes"] and index.get("verified") != _stat_key(w, None):
            problem = self._check_tensors(w, index["tensors"].items())
            if problem is None:
                index["verified"] = _stat_key(w, None)
                atomic_write_text(self.root / INDEX, json.dumps(index, indent=0))
        if problem is not None:
            say(f"the component pack {self.root} is damaged ({problem}); starting it again")
            for f in self.root.iterdir():
                if f.is_file() and not f.name.endswith(".lock"):
                    f.unlink()
            index = self._read()
        return index

    @staticmethod
    def _check_tensors(w: Path, tensors: Iterable[tuple[str, list[int]]]) -> str | None:
        with open(w, "rb") as f:
            for key, (offset, length) in sorted(tensors, key=lambda kv: kv[1][0]):
                f.seek(offset)
                if hashlib.sha256(f.read(length)).hexdigest() != key:
                    return f"the tensor at byte {offset} does not match its sha256"
        return None

    def _intact_entry(self, index: dict, stem: str) -> PackedComponent | None:
        meta = index["components"].get(stem)
        path = self.root / f"{stem}.onnx"
        if meta is None or not path.is_file() or file_sha256(path) != meta["sha256"]:
            return None
        log = self.root / f"{stem}.log"
        return PackedComponent(
            stem, meta["sha256"], meta["weights_sha256"], meta["weight_bytes"], log.read_text() if log.exists() else ""
        )

    def _add(
        self, index: dict, stem: str, raw: Path, log: str, component: str, blocks: tuple[int, ...] | None
    ) -> PackedComponent:
        """Append the tensors of the traced graph at ``raw`` that the pack lacks, point the graph
        into weights.bin and record it (the caller holds the pack lock)."""
        model = onnx.load(str(raw), load_external_data=False)
        tensors, digests = index["tensors"], []
        w = self.root / WEIGHTS
        with open(w, "ab") as f:
            pos = f.tell()
            for t in _external(model):
                data = read_external(raw, t)
                key = hashlib.sha256(data).hexdigest()
                if key not in tensors:
                    pad = (-pos) % ALIGN
                    f.write(b"\0" * pad)
                    tensors[key] = [pos + pad, len(data)]
                    f.write(data)
                    pos += pad + len(data)
                digests.append(key)
                _point(t, *tensors[key])
            f.flush()
            os.fsync(f.fileno())
        index["bytes"] = pos
        index["verified"] = _stat_key(w, None)  # this process wrote what is new; the rest was checked
        tmp = self.root / f".{stem}.onnx.{os.getpid()}.tmp"
        onnx.save_model(model, str(tmp))
        os.replace(tmp, self.root / f"{stem}.onnx")
        atomic_write_text(self.root / f"{stem}.log", log)
        entry = PackedComponent(
            stem,
            file_sha256(self.root / f"{stem}.onnx", use_cache=False),
            hashlib.sha256("".join(digests).encode()).hexdigest(),
            weight_bytes(model),
            log,
        )
        index["components"][stem] = {
            "component": component,
            "blocks": None if blocks is None else list(blocks),
            "sha256": entry.sha256,
            "weights_sha256": entry.weights_sha256,
            "weight_bytes": entry.weight_bytes,
        }
        atomic_write_text(self.root / INDEX, json.dumps(index, indent=0))
        return entry


def _external(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def _point(t: TensorProto, offset: int, length: int) -> None:
    """Make an initializer read ``length`` bytes at ``offset`` of the weights.bin beside its graph."""
    del t.external_data[:]
    for k, v in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
        t.external_data.append(onnx.StringStringEntryProto(key=k, value=v))


def _component_meta(file: str, sha256: str, entry: PackedComponent) -> dict:
    return {"file": file, "sha256": sha256, "weight_bytes": entry.weight_bytes, "weights_sha256": entry.weights_sha256}
