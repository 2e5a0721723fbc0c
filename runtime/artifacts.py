"""From a request (weights, policies, batch, precision) to a verified export artifact, reused by hash.

The export key is a hash of everything an export depends on: the checkpoints' sha256 (or the
random-weights recipe), the policies, the batch, the precision and opset, and the versions of varrt,
torch, the ONNX exporter and the artifact format. ``varrt generate --backend ort`` asks for the
key's directory under the cache; if it exists and verifies, the torch checkpoint is not even loaded.

:func:`provide_artifact` is the cache for both families: one lock per artifact folder, stale staging
swept, the components from the checkpoint's pack, validation in the staging folder, then publish.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from varrt.engines.compare import compare, fewer_rows
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.artifact import (
    FORMAT_VERSION,
    MANIFEST,
    ArtifactError,
    FormatError,
    Manifest,
    cache_dir,
    file_sha256,
    parity_state,
    read_manifest,
    varrt_version,
    verify_files,
)
from varrt.export.checkpoint import CheckpointError
from varrt.export.configs import VARConfig, VQVAEConfig
from varrt.export.exporter import ExportConfig, export_artifact
from varrt.export.graphs import GRAPH_CONTRACT, GraphSpec, conditioner_spec, decoder_spec, step_spec
from varrt.export.locks import held
from varrt.export.pack import Pack
from varrt.export.quantize import (
    QUANTIZED,
    calibrated_components,
    decoder_plan,
    io_precision,
    needs_calibration,
    recipe,
)
from varrt.export.staging import check_out, disk_errors, publish, staging_dir, sweep_folder, sweep_leftovers
from varrt.export.trace_pool import export_jobs
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE
from varrt.runtime.calibration import DEFAULT_GENERATIONS, Calibration, record_feeds
from varrt.runtime.decoder_gate import decoder_fidelity
from varrt.runtime.plan import group_sizes, kv_capacity, spec_identity, step_shapes
from varrt.runtime.policies import Policy, make_policy

Say = Callable[[str], None]
#: fp32 parity of an exported graph with the torch module (max abs difference / max abs reference)
PARITY_TOLERANCE = 1e-4
#: rows (CFG rows, or images for a decoder) each graph is validated at: a batch-256 demo export's
#: graphs at their own 512 rows feed 2 GiB KV caches and took ONNX Runtime past 24 GB
VALIDATION_ROWS = 4


@dataclass(frozen=True)
class ExportRequest:
    source: dict  # {"var": {"path", "sha256"}, "vae": {...}} or {"random_weights": {"model", "seed"}}
    policies: tuple[str, ...]  # policy specs or plan files (see make_policy)
    batch: int
    config: ExportConfig
    #: also every smaller batch bucket (the halvings B // 2, B // 4, ..., 1 of plan.group_sizes, the
    #: sizes split groups already run at): a server pads each batch it forms to a bucket, so every
    #: one of them needs its graphs
    buckets: bool = False

    @property
    def batches(self) -> tuple[int, ...]:
        return group_sizes(self.batch) if self.buckets else (self.batch,)

    def identity(self) -> dict:
        """What the export depends on, and nothing else (paths do not count, contents do); a
        quantized precision adds its recipe and calibration set."""
        out = {
            "source": {k: ({"sha256": v["sha256"]} if "sha256" in v else v) for k, v in self.source.items()},
            "policies": [spec_identity(p) for p in self.policies],
            "batch": self.batch,
            "precision": self.config.precision,
            "opset": self.config.opset,
            "versions": export_versions(),
        }
        if self.config.precision in QUANTIZED:
            cal = self.calibration()
            out["quantization"] = {
                "recipe": recipe(self.config.precision, self.decoder_plan()),
                "calibration": cal and cal.to_dict(),
            }
        if self.buckets:  # only then: the keys of single-batch exports stay what they were
            out["buckets"] = list(self.batches)
        return out

    def decoder_plan(self) -> str:
        """What the export does with the decoder (``quantize.decoder_plan``): random weights
        cannot be gated, so ``--decoder-precision auto`` keeps their decoder fp32."""
        return decoder_plan(self.config.precision, self.config.decoder, "random_weights" in self.source)

    def calibration(self) -> Calibration | None:
        """The calibration set of an int8 / fp8 export (or of int8-cpu's int8 decoder):
        ``config.calibrate`` generations per exported policy at the export's batch, sampled as the
        weights are meant to be."""
        if not needs_calibration(self.config.precision, self.decoder_plan()):
            return None
        from varrt.runtime.weights import OFFICIAL_SAMPLING, Weights

        weights = Weights.of_source(self.source)
        sampling = weights.sampling_defaults if weights is not None else dict(OFFICIAL_SAMPLING)
        return Calibration(
            generations=self.config.calibrate or DEFAULT_GENERATIONS,
            batch=self.batch,
            sampling=tuple(sorted(sampling.items())),
            random_weights="random_weights" in self.source,
        )

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


def export_versions() -> dict:
    """The tool versions an export depends on (part of every export key)."""
    import onnx
    import onnxscript

    return {
        "varrt": varrt_version(),
        "graph_contract": GRAPH_CONTRACT,
        "artifact_format": FORMAT_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
    }


def checkpoint_source(checkpoint: Path, vae: Path) -> dict:
    return {
        name: {"path": str(Path(p).resolve()), "sha256": file_sha256(checkpoint_file(p, name))}
        for name, p in (("var", checkpoint), ("vae", vae))
    }


def checkpoint_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; otherwise the one-line error, before anything is hashed or loaded."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint {p} is a directory; pass the checkpoint file itself")
    return p


def random_source(model: str, seed: int) -> dict:
    return {"random_weights": {"model": model, "seed": seed}}


def required_graphs(
    cfg: VARConfig, vcfg: VQVAEConfig, policies: Sequence[Policy], batch: int, precision: str
) -> tuple[list[GraphSpec], int]:
    """Every static graph a set of policies needs at ``batch``, and the KV capacity they share."""
    precision = io_precision(precision)
    sched = cfg.schedule
    plans = [p for pol in policies for p in pol.plans]
    cap = kv_capacity(plans, sched)
    graphs: dict[str, GraphSpec] = {}

    def add(spec: GraphSpec) -> None:
        graphs.setdefault(spec.name, spec)

    add(conditioner_spec(cfg, 2 * batch))
    for pol in policies:
        for shape in step_shapes(pol.plans, sched, batch, pol.split_from, capacity=cap):
            add(step_spec(cfg, shape, precision))
    add(decoder_spec(vcfg, batch))
    for pol in policies:
        for spec in pol.extra_graphs(vcfg, batch):
            add(spec)
    return list(graphs.values()), cap


def bucketed_graphs(
    cfg: VARConfig, vcfg: VQVAEConfig, policies: Sequence[Policy], batches: Sequence[int], precision: str
) -> tuple[list[GraphSpec], int]:
    """:func:`required_graphs` for several batch sizes at once (their union; one KV capacity)."""
    graphs: dict[str, GraphSpec] = {}
    cap = 0
    for b in batches:
        specs, cap = required_graphs(cfg, vcfg, policies, b, precision)
        graphs.update((g.name, g) for g in specs)
    return list(graphs.values()), cap


def describe_mismatch(stored: dict, wanted: dict) -> str:
    """Which parts of two export identities differ, in words."""
    names = {
        "source": "the weights",
        "plans": "the plans",
        "batch": "the batch",
        "buckets": "the batch buckets",
        "precision": "the precision",
        "opset": "the opset",
        "quantization": "the quantization recipe or calibration set",
        "versions": "the varrt/torch/ONNX versions",
    }
    diffs = [
        f"{names.get(k, k)} ({stored.get(k)} vs {wanted.get(k)})"
        if k in ("batch", "buckets", "precision", "opset", "plans")
        else names.get(k, k)
        for k in dict.fromkeys([*wanted, *stored])
        if stored.get(k) != wanted.get(k)
    ]
    return "; ".join(diffs) or "unknown differences"


def request_fields(request, policies: Sequence[Policy], capacity: int, say: Say, pack: Pack) -> dict:
    """The keywords both families' ``export_*artifact`` take from an export request (VAR's
    :class:`ExportRequest`, Infinity's ``InfinityExportRequest``): what the manifest records of it."""
    return {
        "config": request.config,
        "batch": request.batch,
        "kv_capacity": capacity,
        "plans": [p.to_dict() for pol in policies for p in pol.plans],
        "source": request.source,
        "export_key": request.key(),
        "request": request.identity(),
        "progress": say,
        "pack": pack,
    }


@dataclass(frozen=True)
class ExportJob:
    """One family's export request, as the cache sees it: a key, the identity it hashes, and how to
    load the models, write the artifact into a folder and check it against torch."""

    key: str
    identity: dict
    load_models: Callable[[], tuple]
    write: Callable[[tuple, Path, Pack, Say], Manifest]  # (models, folder, pack, say) -> manifest
    check: Callable[[tuple, Path, Manifest, Say], dict]  # (models, folder, manifest, say) -> parity record


def graph_identity(identity: dict) -> dict:
    """The part of an export identity that a traced component graph depends on: the weights, the
    precision, the opset and the versions (never the batch, the plans or an Infinity schedule). A
    quantized precision traces fp32 graphs (it quantizes them in the artifact), so it shares the
    fp32 pack."""
    out = {k: identity[k] for k in ("family", "source", "precision", "opset", "versions") if k in identity}
    if "precision" in out:
        out["precision"] = io_precision(out["precision"])
    return out


def exports_dir() -> Path:
    return cache_dir() / "exports"


def provide_artifact(
    job: ExportJob, out: Path | None = None, force: bool = False, validate: bool = True, say: Say = lambda _m: None
) -> Path:
    """The artifact for ``job`` (both families): reused when its key matches and it verifies,
    exported otherwise — under a lock per artifact folder (a second identical export waits, then
    reuses), assembled and validated in a staging folder, and only then published.

    An artifact exported with ``validate=False`` is marked so; a later request that validates does
    not reuse it silently: it runs the parity check on it first (and removes it if that fails)."""
    out = Path(out) if out is not None else exports_dir() / job.key[:16]
    in_cache = _at_key(out, job)
    if not in_cache:  # a folder of the cache's own is replaced whatever it holds (under the lock)
        check_out(out)
    with disk_errors(out), held(out, "exporting the same artifact", say):
        sweep_leftovers(out, say)
        if out.parent == exports_dir():
            sweep_folder(out.parent, say)
        if in_cache:
            _clear_damaged(out, say)
        existing = _existing(out, job, force or in_cache, say)
        if existing is not None:
            if validate and parity_state(existing) == "not run":
                _validate_in_place(job, out, existing, say)
            else:
                note = " (not validated: exported with --no-validate)" if parity_state(existing) == "not run" else ""
                say(f"reusing the export in {out}{note}")
            with contextlib.suppress(OSError):  # the age `varrt cache clean --older-than` reads
                os.utime(out / MANIFEST)
            return out
        export_jobs(1)  # a bad VARRT_EXPORT_JOBS fails here, before the models load
        say("loading the torch models")
        models = job.load_models()
        pack = Pack.for_identity(graph_identity(job.identity), shared=out.parent == exports_dir())
        sweep_folder(pack.root, say)
        work = staging_dir(out)
        try:
            manifest = job.write(models, work, pack, say)
            manifest.validation["parity"] = (
                job.check(models, work, manifest, say) if validate else {"not_run": "exported with --no-validate"}
            )
            manifest.write(work)
            publish(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _at_key(out: Path, job: ExportJob) -> bool:
    """``out`` is the cache's folder of this export key: nobody else's, so whatever is found there
    that is not this export intact (damaged, half-deleted, another key) is replaced, never refused."""
    return out.parent == exports_dir() and out.name == job.key[:16]


def _clear_damaged(out: Path, say: Say) -> None:
    """Remove what sits at the cache key without a manifest (a file, a folder whose manifest was
    deleted): nothing there can be verified or served. The caller holds the folder's lock."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        say(f"replacing {out}: not an artifact folder")
        out.unlink()
    elif out.is_dir() and not (out / MANIFEST).exists():
        say(f"replacing {out}: it has no {MANIFEST} (a damaged artifact)")
        shutil.rmtree(out)


def _existing(out: Path, job: ExportJob, replace: bool, say: Say) -> Manifest | None:
    """The artifact already at ``out`` if it is this export and verifies; None if there is none or
    it is to be replaced (damaged files, an older artifact format, or anything else when
    ``replace``: ``--force``, or the cache's own folder of this key); an error otherwise, before
    any model is loaded: another export in ``out``, or an ``--out`` whose manifest cannot be read."""
    if not (out / MANIFEST).exists():
        return None
    try:
        m = read_manifest(out)
    except FormatError as e:
        say(f"replacing {out}: {e.found}")
        return None
    except ArtifactError as e:
        if replace:
            say(f"exporting again: {e}")
            return None
        raise ArtifactError(
            f"{out} holds a damaged artifact ({str(e).split('; re-export')[0]}); pass --force to replace it, "
            "or choose another --out"
        ) from None
    if m.export_key == job.key:
        try:
            verify_files(out, m)
        except ArtifactError as e:  # a damaged artifact is never served; this export replaces it
            say(f"exporting again: {e}")
            return None
        return m
    if not replace:
        raise ArtifactError(
            f"{out} holds another export ({describe_mismatch(m.request, job.identity)} differ); "
            "pass --force to replace it, or choose another --out"
        )
    say(f"replacing {out}: it holds another export")
    return None


def _validate_in_place(job: ExportJob, out: Path, manifest: Manifest, say: Say) -> None:
    say(f"validating the export in {out} (it was exported with --no-validate)")
    try:
        manifest.validation["parity"] = job.check(job.load_models(), out, manifest, say)
    except ParityError:
        shutil.rmtree(out, ignore_errors=True)
        raise
    manifest.write(out)


def ensure_artifact(
    request: ExportRequest,
    load_models: Callable[[], tuple[VAR, VQVAE]],
    out: Path | None = None,
    force: bool = False,
    validate: bool = True,
    say: Say = lambda _m: None,
) -> Path:
    """The VAR artifact for ``request``: reused when its key matches, exported (and validated)
    otherwise. A quantized precision first records its calibration feeds (eager torch generations)."""

    def write(models: tuple[VAR, VQVAE], work: Path, pack: Pack, say: Say) -> Manifest:
        var, vqvae = models
        policies = [make_policy(spec, var.cfg) for spec in request.policies]
        graphs, cap = bucketed_graphs(var.cfg, vqvae.cfg, policies, request.batches, request.config.precision)
        precision, plan = request.config.precision, request.decoder_plan()
        calibration, feeds, quantization, gate = request.calibration(), None, {}, None
        if precision in QUANTIZED:
            quantization = {"precision": precision, "recipe": recipe(precision, plan)}
        if calibration is not None:
            say(f"calibrate: {calibration.generations} generations x {len(policies)} policies (eager torch)")
            feeds = record_feeds(var, vqvae, policies, calibration, cap, calibrated_components(precision, plan))
            quantization["calibration"] = calibration.to_dict(var.cfg.num_classes)
        if plan == "gated":
            held_out = calibration.held_out()
            say(f"decoder gate: {held_out.generations} held-out generations (seeds from {held_out.seed0}, eager torch)")
            latents = record_feeds(var, vqvae, [make_policy("full", var.cfg)], held_out, cap, ("decoder",))["decoder"]
            gate = functools.partial(decoder_fidelity, feeds=latents)
            quantization["decoder_gate_set"] = held_out.to_dict(var.cfg.num_classes)
        fields = request_fields(request, policies, cap, say, pack)
        return export_artifact(
            var, vqvae, graphs, work, **fields, calibration=feeds, quantization=quantization, decoder=plan,
            decoder_gate=gate,
        )  # fmt: skip

    def check(models: tuple[VAR, VQVAE], where: Path, manifest: Manifest, say: Say) -> dict:
        return validate_parity(where, TorchEngine(*models), manifest, say)

    job = ExportJob(request.key(), request.identity(), load_models, write, check)
    return provide_artifact(job, out, force, validate, say)


class ParityError(ArtifactError):
    """An exported artifact whose graphs disagree with torch, or return NaN/Inf, on the same inputs."""


def validate_parity(out: Path, reference, manifest: Manifest, say: Say) -> dict:
    """Every static graph of the artifact at ``out`` in ONNX Runtime vs the torch ``reference``
    engine on the same random inputs (either family), each at no more than :data:`VALIDATION_ROWS`
    rows (:func:`fewer_rows`: memory bounded whatever the batch). Any NaN or Inf in either output fails, naming
    the graph and the tensor: a non-finite difference would compare as 0. A quantized artifact
    records its error against fp32 torch (no tolerance: what quantization costs is measured on
    real generations, tools/bench_quantized.py)."""
    quantized = manifest.precision in QUANTIZED
    if manifest.precision != "float32" and not quantized:
        return {
            "skipped": f"ONNX Runtime's CPU provider has no {manifest.precision} kernels for these graphs; "
            "fp16/bf16 parity is checked on GPU backends"
        }
    say(f"validate: ONNX Runtime vs torch on {len(manifest.graphs)} graphs")
    if manifest.family == "infinity":
        tokens, classes = manifest.infinity_schedule.total_tokens, 0
    else:
        tokens, classes = manifest.var.schedule.total_tokens, manifest.var.num_classes
    candidate = OrtEngine(out, verify=False)
    graphs = [fewer_rows(g, candidate.declared_shapes(g.component), VALIDATION_ROWS) for g in manifest.graphs]
    diffs = compare(reference, candidate, graphs, total_tokens=tokens, num_classes=classes)
    broken = [f"{d.graph}: {d.output} has {d.non_finite}" for d in diffs if d.non_finite]
    if broken:
        more = f" (and {len(broken) - 3} more)" if len(broken) > 3 else ""
        raise ParityError(
            f"validation failed: {'; '.join(broken[:3])}{more}; NaN/Inf outputs come from NaN/Inf in the weights "
            "or an overflow at this precision — check the checkpoint, or export in float32"
        )
    worst: dict[str, float] = {}
    for d in diffs:
        worst[d.graph] = max(worst.get(d.graph, 0.0), d.rel)
    inputs = f"random (compare's feeds), at most {VALIDATION_ROWS} rows per graph"
    if quantized:  # the error quantization costs, on random inputs (fidelity: tools/bench_quantized.py)
        return {"quantized_vs_fp32_max_relative_error": worst, "inputs": inputs}
    bad = {g: r for g, r in worst.items() if r > PARITY_TOLERANCE}
    if bad:
        raise ParityError(
            f"validation failed: exported graphs disagree with torch beyond {PARITY_TOLERANCE:g} (relative): {bad}"
        )
    return {"tolerance": PARITY_TOLERANCE, "max_relative_error": worst, "inputs": inputs}
