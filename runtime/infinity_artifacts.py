"""From an Infinity request (weights, policies, batch, schedule, text bucket) to a verified artifact.

The export key hashes what the export depends on — the three sources' contents, the policies, the
batch, the schedule, the text length, the precision and opset, and the versions — and the artifact
lives under ``$VARRT_CACHE/exports/<key>``; a matching one is reused without loading any weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from varrt.export.artifact import ArtifactError, cache_dir, file_sha256, read_manifest, verify_files
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
from varrt.runtime.artifacts import describe_mismatch, export_versions
from varrt.runtime.bitwise import vae_grid
from varrt.runtime.infinity_generate import infinity_step_shape
from varrt.runtime.plan import kv_capacity, spec_identity, step_shapes
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

    def identity(self) -> dict:
        return {
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

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


def infinity_source(checkpoint: Path, vae: Path, text_encoder: Path) -> dict:
    """Files by content: a sharded checkpoint directory hashes its index and shards."""

    def digest(p: Path) -> str:
        p = Path(p)
        if not p.is_dir():
            return file_sha256(p)
        h = hashlib.sha256()
        for f in sorted(x for x in p.iterdir() if x.is_file()):
            h.update(f.name.encode() + file_sha256(f).encode())
        return h.hexdigest()

    return {
        name: {"path": str(Path(p).resolve()), "sha256": digest(p)}
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
    split a batch into groups of any size 1..B after their decision: those sizes are exported too."""
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
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The artifact for ``request``: reused when its key matches, exported otherwise.
    ``load_models`` returns (Infinity, BSQVAE, TextEncoder) and is only called to export."""
    key = request.key()
    out = Path(out) if out is not None else cache_dir() / "exports" / key[:16]
    if (out / "manifest.json").exists():
        m = read_manifest(out)
        if m.export_key == key:
            verify_files(out, m)
            say(f"reusing the export in {out}")
            return out
        if not force:
            raise ArtifactError(
                f"{out} holds another export ({describe_mismatch(m.request, request.identity())} differ); "
                "pass --force to replace it, or choose another --out"
            )
    say("loading the torch models")
    model, vae, text_encoder = load_models()
    policies = [make_infinity_policy(s, request.schedule, model.cfg.depth) for s in request.policies]
    graphs, cap = required_infinity_graphs(
        model.cfg,
        vae.cfg,
        request.schedule,
        policies,
        request.batch,
        request.text_length,
        request.negative,
        request.config.precision,
    )
    export_infinity_artifact(
        model,
        vae,
        text_encoder,
        graphs,
        out,
        config=request.config,
        schedule=request.schedule,
        batch=request.batch,
        kv_capacity=cap,
        plans=[p.to_dict() for pol in policies for p in pol.plans],
        source=request.source,
        export_key=key,
        request=request.identity(),
        progress=say,
    )
    return out
