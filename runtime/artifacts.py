"""From a request (weights, policies, batch, precision) to a verified export artifact, reused by hash.

The export key is a hash of everything an export depends on: the checkpoints' sha256 (or the
random-weights recipe), the policies, the batch, the precision and opset, and the versions of varrt,
torch and the ONNX exporter. ``varrt generate --backend ort`` asks for the key's directory under
the cache; if it exists and verifies, the torch checkpoint is not even loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from varrt.engines.compare import compare
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.artifact import (
    ArtifactError,
    Manifest,
    cache_dir,
    file_sha256,
    read_manifest,
    varrt_version,
    verify_files,
)
from varrt.export.configs import VARConfig, VQVAEConfig
from varrt.export.exporter import ExportConfig, ExportError, export_artifact
from varrt.export.graphs import GRAPH_CONTRACT, GraphSpec, conditioner_spec, decoder_spec, step_spec
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE
from varrt.runtime.plan import kv_capacity, spec_identity, step_shapes
from varrt.runtime.policies import Policy, make_policy

#: fp32 parity of an exported graph with the torch module (max abs difference / max abs reference)
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportRequest:
    source: dict  # {"var": {"path", "sha256"}, "vae": {...}} or {"random_weights": {"model", "seed"}}
    policies: tuple[str, ...]  # policy specs or plan files (see make_policy)
    batch: int
    config: ExportConfig

    def identity(self) -> dict:
        """What the export depends on, and nothing else (paths do not count, contents do)."""
        return {
            "source": {k: ({"sha256": v["sha256"]} if "sha256" in v else v) for k, v in self.source.items()},
            "policies": [spec_identity(p) for p in self.policies],
            "batch": self.batch,
            "precision": self.config.precision,
            "opset": self.config.opset,
            "versions": export_versions(),
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


def export_versions() -> dict:
    """The tool versions an export depends on (part of every export key)."""
    import onnx
    import onnxscript

    return {
        "varrt": varrt_version(),
        "graph_contract": GRAPH_CONTRACT,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
    }


def checkpoint_source(checkpoint: Path, vae: Path) -> dict:
    return {
        name: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
        for name, p in (("var", checkpoint), ("vae", vae))
    }


def random_source(model: str, seed: int) -> dict:
    return {"random_weights": {"model": model, "seed": seed}}


def required_graphs(
    cfg: VARConfig, vcfg: VQVAEConfig, policies: Sequence[Policy], batch: int, precision: str
) -> tuple[list[GraphSpec], int]:
    """Every static graph a set of policies needs at ``batch``, and the KV capacity they share."""
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


def describe_mismatch(stored: dict, wanted: dict) -> str:
    """Which parts of two export identities differ, in words."""
    names = {
        "source": "the weights",
        "plans": "the plans",
        "batch": "the batch",
        "precision": "the precision",
        "opset": "the opset",
        "versions": "the varrt/torch/ONNX versions",
    }
    diffs = [
        f"{names.get(k, k)} ({stored.get(k)} vs {wanted.get(k)})"
        if k in ("batch", "precision", "opset", "plans")
        else names.get(k, k)
        for k in wanted
        if stored.get(k) != wanted.get(k)
    ]
    return "; ".join(diffs) or "unknown differences"


def ensure_artifact(
    request: ExportRequest,
    load_models: Callable[[], tuple[VAR, VQVAE]],
    out: Path | None = None,
    force: bool = False,
    validate: bool = True,
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The artifact for ``request``: reused when its key matches, exported (and validated) otherwise."""
    key = request.key()
    if out is None:
        out = cache_dir() / "exports" / key[:16]
    out = Path(out)
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
    var, vqvae = load_models()
    policies = [make_policy(spec, var.cfg) for spec in request.policies]
    graphs, cap = required_graphs(var.cfg, vqvae.cfg, policies, request.batch, request.config.precision)
    plans = [p for pol in policies for p in pol.plans]
    manifest = export_artifact(
        var,
        vqvae,
        graphs,
        out,
        config=request.config,
        batch=request.batch,
        kv_capacity=cap,
        plans=[p.to_dict() for p in plans],
        source=request.source,
        export_key=key,
        progress=say,
        request=request.identity(),
    )
    if validate:
        try:
            manifest.validation["parity"] = validate_parity(out, var, vqvae, manifest, say)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        manifest.write(out)
    return out


def validate_parity(out: Path, var: VAR, vqvae: VQVAE, manifest: Manifest, say: Callable[[str], None]) -> dict:
    """Every exported static graph in ONNX Runtime vs the torch module on the same random inputs."""
    if manifest.precision != "float32":
        return {
            "skipped": f"ONNX Runtime's CPU provider has no {manifest.precision} kernels for these graphs; "
            "fp16/bf16 parity is checked on GPU backends"
        }
    say(f"validate: ONNX Runtime vs torch on {len(manifest.graphs)} graphs")
    diffs = compare(TorchEngine(var, vqvae), OrtEngine(out, verify=False), manifest.graphs)
    worst = {}
    for d in diffs:
        worst[d.graph] = max(worst.get(d.graph, 0.0), d.rel)
    bad = {g: r for g, r in worst.items() if r > PARITY_TOLERANCE}
    if bad:
        raise ExportError(f"exported graphs disagree with torch beyond {PARITY_TOLERANCE:g} (relative): {bad}")
    return {"tolerance": PARITY_TOLERANCE, "max_relative_error": worst}
