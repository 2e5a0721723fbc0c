"""Export artifacts: a directory of ONNX graphs that share one weights file, and its manifest.

    ARTIFACT/
      manifest.json            what was exported, from what, for which static shapes (see Manifest)
      conditioner.onnx         one graph per component, symbolic dims (rows, tokens, capacity, ...)
      transformer.onnx
      decoder.onnx
      weights.bin              every initializer of every graph, once (external data)
      quantizer.safetensors    codebook + Phi convolutions: the runtime accumulates f_hat with them

The static shapes are the manifest's graph list: every backend runs the component graphs at those
shapes (ONNX Runtime with symbolic dims, TensorRT one profile each), so no per-shape file is kept.
An artifact in the cache (``$VARRT_CACHE/exports/<key>``) keeps only manifest.json, the quantizer
and export.log: its component graphs and weights.bin are its checkpoint's pack
(:mod:`varrt.export.pack`), named in the manifest by relative path; the pack's weights.bin may have
grown past the prefix the manifest records. An ``--out`` artifact holds everything itself.

A manifest that does not describe its directory (a missing or changed file, another varrt format)
is refused with a message that says what differs and how to re-export.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from varrt.export.configs import VARConfig, VQVAEConfig
from varrt.export.graphs import GraphSpec
from varrt.export.infinity_config import BSQVAEConfig, InfinityConfig, InfinitySchedule

FORMAT = "varrt-artifact"
#: 2: no per-shape .onnx files; weights.bin may be a shared pack (its recorded prefix is hashed);
#: the parity state says whether the artifact was validated
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
QUANTIZER = "quantizer.safetensors"


class ArtifactError(ValueError):
    """An artifact directory that cannot be used; the message says why and how to re-export."""


class FormatError(ArtifactError):
    """An artifact of another varrt artifact format: unusable here, replaced by the next export."""

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.found = found


class DiskFullError(ArtifactError):
    """The disk ran full while writing an export; the message names the folder."""


def varrt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("varrt")
    except PackageNotFoundError:
        return "0+unknown"


def cache_dir() -> Path:
    """``$VARRT_CACHE`` or ``~/.cache/varrt``: exports, engines, timing caches, hashes."""
    return Path(os.environ.get("VARRT_CACHE", Path.home() / ".cache" / "varrt"))


_HASHES: dict[str, str] = {}  # this process's hashes, by stat key


def _stat_key(p: Path, length: int | None) -> str:
    st = p.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{length}"


def file_sha256(path: str | os.PathLike, use_cache: bool = True, length: int | None = None) -> str:
    """sha256 of a file (of its first ``length`` bytes if given), remembered so that multi-GB files
    hash once.

    The memory is keyed by the file's inode and its size, mtime *and ctime*: a write that puts the
    size and mtime back still moves the ctime, which only the kernel sets, so changed content is
    always hashed again (a hard link or chmod moves it too: one re-hash). ``use_cache=False`` reads
    the whole file regardless (``varrt inspect --verify``)."""
    p = Path(path).resolve()
    key = _stat_key(p, length)
    index = cache_dir() / "hashes.json"
    if use_cache:
        if key in _HASHES:
            return _HASHES[key]
        known = _read_hashes(index)
        if key in known:
            _HASHES[key] = known[key]["sha256"]
            return _HASHES[key]
    h = hashlib.sha256()
    left = p.stat().st_size if length is None else length
    with open(p, "rb") as f:
        while left > 0 and (chunk := f.read(min(1 << 24, left))):
            h.update(chunk)
            left -= len(chunk)
    if left > 0:
        raise ArtifactError(f"{p} is shorter than the {length} bytes to hash (truncated)")
    digest = h.hexdigest()
    if _stat_key(p, length) != key:  # written to while being read: hash again next time
        return digest
    _HASHES[key] = digest
    if use_cache:
        _remember_hash(index, key, str(p), digest)
    return digest


def _read_hashes(index: Path) -> dict[str, dict]:
    try:
        known = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in known.items() if isinstance(v, dict) and "sha256" in v}


def _remember_hash(index: Path, key: str, path: str, digest: str) -> None:
    """Add one hash to the on-disk memory and drop the entries whose file has changed since."""
    from varrt.export.locks import held

    try:
        with held(index, "hash cache"):
            known = _read_hashes(index)
            known[key] = {"sha256": digest, "path": path}
            fresh = {}
            for k, v in known.items():
                try:
                    if _stat_key(Path(v["path"]), _length_of(k)) == k:
                        fresh[k] = v
                except OSError:
                    pass
            atomic_write_text(index, json.dumps(fresh, indent=0))
    except (OSError, ArtifactError):
        pass  # a read-only cache only loses the memory, not the check


def _length_of(key: str) -> int | None:
    tail = key.rsplit(":", 1)[1]
    return None if tail == "None" else int(tail)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Manifest:
    """Everything an engine needs to trust and run an artifact directory.

    A VAR artifact sets ``var`` and ``vqvae``; an Infinity artifact sets ``infinity``, ``bsq_vae``
    and the ``infinity_schedule`` it was exported for (``var``/``vqvae`` are None)."""

    var: VARConfig | None
    vqvae: VQVAEConfig | None
    precision: str  # dtype of matmuls and KV: float32 | float16 | bfloat16; or int8 | int8-cpu | fp8 (fp32 KV)
    opset: int
    batch: int
    kv_capacity: int
    plans: list[dict]  # the plans whose shapes were exported (Plan.to_dict())
    graphs: list[GraphSpec]  # every static shape, by name
    components: dict[str, dict]  # component -> {"file", "sha256", "weight_bytes", "weights_sha256", "blocks"}
    files: dict[str, dict]  # relative file -> {"sha256", "bytes", "shared"} (weights, quantizer)
    source: dict  # checkpoints and their sha256, or the random-weights recipe
    export_key: str = ""
    request: dict = field(default_factory=dict)  # the export identity the key hashes
    validation: dict = field(default_factory=dict)
    varrt_version: str = field(default_factory=varrt_version)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    environment: dict = field(default_factory=dict)
    infinity: InfinityConfig | None = None
    bsq_vae: BSQVAEConfig | None = None
    infinity_schedule: InfinitySchedule | None = None
    #: quantized precisions: the recipe, the calibration set, what each component got (else empty)
    quantization: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return "infinity" if self.infinity is not None else "var"

    @property
    def label(self) -> str:
        """The model's name, for messages and cache folders."""
        return (self.infinity.name or "infinity") if self.infinity is not None else self.var.label

    def graph(self, name: str) -> GraphSpec | None:
        return next((g for g in self.graphs if g.name == name), None)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "varrt_version": self.varrt_version,
            "created": self.created,
            "export_key": self.export_key,
            "request": self.request,
            "model": self._model_dict(),
            "source": self.source,
            "precision": self.precision,
            **({"quantization": self.quantization} if self.quantization else {}),
            "opset": self.opset,
            "batch": self.batch,
            "schedule": (self.infinity_schedule.to_dict() if self.family == "infinity" else list(self.var.patch_nums)),
            "kv_capacity": self.kv_capacity,
            "plans": self.plans,
            "components": self.components,
            "graphs": [g.to_dict() for g in self.graphs],
            "files": self.files,
            "validation": self.validation,
            "environment": self.environment,
        }

    def _model_dict(self) -> dict:
        if self.family == "infinity":
            return {"family": "infinity", "infinity": self.infinity.to_dict(), "bsq_vae": self.bsq_vae.to_dict()}
        return {"family": "var", "var": self.var.to_dict(), "vqvae": self.vqvae.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{where} is not a varrt artifact manifest (format {d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            found = (
                f"artifact format {d.get('format_version')}, this varrt ({varrt_version()}) reads "
                f"format {FORMAT_VERSION}"
            )
            hint = " (format 2 keeps no per-shape .onnx files and shares weights)" if FORMAT_VERSION == 2 else ""
            raise FormatError(f"{where} has {found}{hint}; re-export it with `varrt export`", found)
        try:
            model = d["model"]
            infinity = model.get("family") == "infinity"
            return cls(
                var=None if infinity else VARConfig.from_dict(model["var"]),
                vqvae=None if infinity else VQVAEConfig.from_dict(model["vqvae"]),
                infinity=InfinityConfig.from_dict(model["infinity"]) if infinity else None,
                bsq_vae=BSQVAEConfig.from_dict(model["bsq_vae"]) if infinity else None,
                infinity_schedule=InfinitySchedule.from_dict(d["schedule"]) if infinity else None,
                precision=d["precision"],
                opset=d["opset"],
                batch=d["batch"],
                kv_capacity=d["kv_capacity"],
                plans=d["plans"],
                graphs=[GraphSpec.from_dict(g) for g in d["graphs"]],
                components=d["components"],
                files=d["files"],
                source=d["source"],
                export_key=d.get("export_key", ""),
                request=d.get("request", {}),
                validation=d.get("validation", {}),
                varrt_version=d["varrt_version"],
                created=d["created"],
                environment=d.get("environment", {}),
                quantization=d.get("quantization", {}),
            )
        except KeyError as e:
            raise ArtifactError(
                f"{where} is incomplete or damaged (missing {e}); re-export with `varrt export`"
            ) from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{where} is damaged ({e}); re-export with `varrt export`") from None

    def write(self, directory: Path) -> None:
        atomic_write_text(directory / MANIFEST, json.dumps(self.to_dict(), indent=1))


def read_manifest(directory: str | os.PathLike) -> Manifest:
    d = Path(directory)
    p = d / MANIFEST
    if not d.is_dir():
        raise ArtifactError(f"artifact directory not found: {d}; create it with `varrt export --out {d}`")
    if not p.exists():
        raise ArtifactError(f"{d} has no {MANIFEST}: it is not a varrt export (create one with `varrt export`)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p} is not valid JSON ({e}); re-export with `varrt export`") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{p} holds a JSON {type(data).__name__}, not a manifest; re-export with `varrt export`")
    return Manifest.from_dict(data, str(p))


def verify_files(directory: Path, manifest: Manifest, full: bool = False) -> None:
    """Every file the manifest names is there, with its size and sha256 (see :func:`file_sha256` for
    when a hash is remembered; ``full`` reads every byte again). A shared ``weights.bin`` (its
    checkpoint's pack, for an artifact in the cache) may have grown: its recorded prefix is checked."""
    d = Path(directory)
    expected = {c["file"]: {"sha256": c["sha256"]} for c in manifest.components.values()}
    expected.update({meta.get("path", name): meta for name, meta in manifest.files.items()})
    for rel, meta in expected.items():
        p = d / rel
        if not p.is_file():
            moved = (
                " (an artifact in the cache references its checkpoint's pack in $VARRT_CACHE/packs: to move or ship "
                "one, export it with `varrt export --out DIR`)"
                if rel.startswith("..")
                else ""
            )
            raise ArtifactError(
                f"{d}: {rel} is missing; the artifact is incomplete{moved} — re-export with `varrt export`"
            )
        size, want = p.stat().st_size, meta.get("bytes")
        shared = bool(meta.get("shared"))
        if want is not None and (size < want if shared else size != want):
            raise ArtifactError(
                f"{d}: {rel} has {size} bytes, the manifest says {want} (truncated or replaced); "
                "re-export with `varrt export`"
            )
        if file_sha256(p, use_cache=not full, length=want if shared else None) != meta["sha256"]:
            raise ArtifactError(
                f"{d}: {rel} does not match its sha256 in the manifest (changed or corrupt); "
                "re-export with `varrt export`"
            )


#: what ``verify_files`` establishes, in words (``varrt inspect`` shows it)
FILE_CHECK = (
    "every file's size and sha256 against the manifest; a hash is remembered per inode, size, mtime and "
    "ctime (a write moves the ctime even when the mtime is put back, so changed content is re-hashed)"
)


def parity_state(manifest: Manifest) -> str:
    """``passed`` (ONNX Runtime vs torch within tolerance), ``measured`` (a quantized artifact: its
    error vs fp32 torch recorded, no NaN/Inf; no tolerance applies), ``skipped`` (no CPU kernels for
    the precision: nothing to run it on here) or ``not run`` (exported with ``--no-validate``)."""
    parity = manifest.validation.get("parity")
    if isinstance(parity, dict) and "max_relative_error" in parity:
        return "passed"
    if isinstance(parity, dict) and "quantized_vs_fp32_max_relative_error" in parity:
        return "measured"
    if isinstance(parity, dict) and parity.get("skipped"):
        return "skipped"
    return "not run"


def artifact_file(directory: str | os.PathLike, manifest: Manifest, name: str) -> Path:
    """Where one of the manifest's files is: in the artifact, or (weights.bin of an artifact in the
    cache) in its checkpoint's pack."""
    return Path(directory) / manifest.files[name].get("path", name)


def load_artifact_quantizer(directory: Path, manifest: Manifest):
    """The codebook and Phi convolutions an artifact carries for the runtime's f_hat accumulation."""
    from safetensors.torch import load_file

    from varrt.export.vqvae import MultiScaleQuantizer

    q = MultiScaleQuantizer(manifest.vqvae)
    q.load_state_dict(load_file(str(Path(directory) / QUANTIZER)))
    return q.eval().requires_grad_(False)


def environment() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
    }
