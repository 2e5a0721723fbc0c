"""From an Infinity request (weights, policies, batch, schedule, text bucket) to a verified artifact.

The export key hashes what the export depends on — the three sources' contents, the policies, the
batch, the schedule, the text length, the precision and opset, and the versions — and the artifact
lives under ``$VARRT_CACHE/exports/<key>``; a matching one is reused without loading any weights.
The cache itself (lock, staging, pack, validation, publish) is VAR's: ``runtime/artifacts.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from varrt.engines.torch_engine import InfinityTorchEngine
from varrt.export.artifact import Manifest, file_sha256
from varrt.export.checkpoint import CheckpointError
from varrt.export.exporter import ExportConfig
from varrt.export.graphs import GraphSpec
from varrt.export.infinity_config import BSQVAEConfig, InfinityConfig, InfinitySchedule
from varrt.export.infinity_exporter import export_infinity_artifact
from varrt.export.infinity_graphs import (
    infinity_conditioner_spec,
    infinity_decoder_spec,
    infinity_step_spec,
    text_encoder_spec,
)
from varrt.export.pack import Pack
from varrt.export.quantize import QUANTIZED
from varrt.runtime.artifacts import ExportJob, export_versions, provide_artifact, request_fields, validate_parity
from varrt.runtime.bitwise import vae_grid
from varrt.runtime.infinity_generate import infinity_step_shape
from varrt.runtime.plan import group_sizes, kv_capacity, spec_identity, step_shapes
from varrt.runtime.policies import Policy
from varrt.runtime.policies.infinity import make_infinity_policy


@dataclass(frozen=True)
class InfinityExportRequest:
    source: dict  # {"infinity": {"path", "sha256"}, "vae": {...}, "text_encoder": {...}} or random weights
    policies: tuple[str, ...]
    batch: int
    schedule: InfinitySchedule
    text_length: int
    negative: bool  # also the text encoder shape for prompts + negative prompts
    config: ExportConfig = field(default_factory=ExportConfig)
    buckets: bool = False  # also every smaller batch bucket (see ExportRequest.buckets)

    @property
    def batches(self) -> tuple[int, ...]:
        return group_sizes(self.batch) if self.buckets else (self.batch,)

    def identity(self) -> dict:
        identity = {
            "family": "infinity",
            "source": {k: ({"sha256": v["sha256"]} if "sha256" in v else v) for k, v in self.source.items()},
            "policies": [spec_identity(p) for p in self.policies],
            "batch": self.batch,
            "schedule": self.schedule.to_dict(),
            "text_length": self.text_length,
            "negative": self.negative,
            "precision": self.config.precision,
            "opset": self.config.opset,
            "versions": export_versions(),
        }
        if self.buckets:
            identity["buckets"] = list(self.batches)
        return identity

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


def infinity_source(checkpoint: Path, vae: Path, text_encoder: Path) -> dict:
    """Files by content: a sharded checkpoint directory hashes its index and shards."""

    def digest(name: str, p: Path) -> str:
        p = Path(p)
        if not p.exists():
            raise CheckpointError(f"{name} not found: {p}")
        if not p.is_dir():
            return file_sha256(p)
        h = hashlib.sha256()
        for f in sorted(x for x in p.iterdir() if x.is_file()):
            h.update(f.name.encode() + file_sha256(f).encode())
        return h.hexdigest()

    return {
        name: {"path": str(Path(p).resolve()), "sha256": digest(name, p)}
        for name, p in (("infinity", checkpoint), ("vae", vae), ("text_encoder", text_encoder))
    }


def required_infinity_graphs(
    cfg: InfinityConfig,
    vcfg: BSQVAEConfig,
    schedule: InfinitySchedule,
    policies: Sequence[Policy],
    batch: int,
    text_length: int,
    negative: bool,
    precision: str,
) -> tuple[list[GraphSpec], int]:
    """Every static graph the policies need, and the KV capacity they share. Adaptive policies
    split a batch into groups after their decision: the bucketed group sizes (B, B // 2, ..., 1,
    :func:`~varrt.runtime.plan.group_sizes`) are exported too."""
    plans = [p for pol in policies for p in pol.plans]
    cap = kv_capacity(plans, schedule)
    graphs: dict[str, GraphSpec] = {}

    def add(spec: GraphSpec) -> None:
        graphs.setdefault(spec.name, spec)

    for rows in (batch, 2 * batch) if negative else (batch,):  # prompts, and prompts + negative prompts
        add(text_encoder_spec(cfg.text_channels, rows, text_length))
    add(infinity_conditioner_spec(cfg, 2 * batch, text_length, precision))

    def shape_of(plan, si, b, c):
        return infinity_step_shape(plan, si, schedule, b, c, text_length)

    for pol in policies:
        for shape in step_shapes(pol.plans, schedule, batch, pol.split_from, cap, shape_of):
            add(infinity_step_spec(cfg, shape, precision))
        for spec in pol.extra_graphs(vcfg, batch, cfg.patchify):
            add(spec)
    add(infinity_decoder_spec(vcfg, batch, vae_grid(schedule.last, cfg.patchify)))
    return list(graphs.values()), cap


def ensure_infinity_artifact(
    request: InfinityExportRequest,
    load_models: Callable[[], tuple],
    out: Path | None = None,
    force: bool = False,
    validate: bool = True,
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The artifact for ``request``: reused when its key matches, exported and validated otherwise
    (the same cache as VAR's: :func:`varrt.runtime.artifacts.provide_artifact`). ``load_models``
    returns (Infinity, BSQVAE, TextEncoder) and is only called to export or validate."""
    if request.config.precision in QUANTIZED:
        raise ValueError(
            f"--precision {request.config.precision}: quantized exports cover VAR so far; export Infinity at "
            "float32, float16 or bfloat16"
        )

    def write(models: tuple, work: Path, pack: Pack, say: Callable[[str], None]) -> Manifest:
        model, vae, text_encoder = models
        policies = [make_infinity_policy(s, request.schedule, model.cfg.depth) for s in request.policies]
        graphs: dict[str, GraphSpec] = {}
        for b in request.batches:  # the batch, and with buckets every smaller bucket
            specs, cap = required_infinity_graphs(
                model.cfg, vae.cfg, request.schedule, policies, b, request.text_length, request.negative,
                request.config.precision,
            )  # fmt: skip
            graphs.update((g.name, g) for g in specs)
        fields = request_fields(request, policies, cap, say, pack)
        return export_infinity_artifact(
            model, vae, text_encoder, list(graphs.values()), work, schedule=request.schedule, **fields
        )

    def check(models: tuple, where: Path, manifest: Manifest, say: Callable[[str], None]) -> dict:
        return validate_parity(where, InfinityTorchEngine(*models), manifest, say)

    job = ExportJob(request.key(), request.identity(), load_models, write, check)
    return provide_artifact(job, out, force, validate, say)
