"""Write an export artifact: component graphs, static specialisations, one weights file, checks.

The directory is assembled under a temporary name and renamed into place at the end, so a crash
or Ctrl-C never leaves a half-written artifact behind.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from varrt.export.artifact import (
    QUANTIZER,
    WEIGHTS,
    ArtifactError,
    Manifest,
    environment,
    file_sha256,
)
from varrt.export.checkpoint import save_safetensors
from varrt.export.graphs import (
    COMPONENTS,
    DTYPES,
    FastVarShape,
    GraphSpec,
    StepShape,
    conditioner_spec,
    decoder_spec,
    fastvar_spec,
    graph_module,
    transformer_spec,
)
from varrt.export.onnx_export import export_component, merge_weights, specialize, weight_bytes
from varrt.export.trt_ops import unsupported_ops
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The export produced graphs that fail a check (ONNX checker, TensorRT op support)."""


@dataclass(frozen=True)
class ExportConfig:
    precision: str = "float32"  # matmul / KV dtype of the transformer and decoder graphs
    opset: int = 20  # native LayerNormalization (17) and Gelu (20); TensorRT 10 parses 9-20

    def __post_init__(self) -> None:
        if self.precision not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"precision must be float32, float16 or bfloat16, got {self.precision!r}")
        if not 18 <= self.opset <= 20:
            raise ValueError(f"opset {self.opset}: varrt exports opset 18-20 (TensorRT 10's parser covers 9-20)")


def precision_models(var: VAR, vqvae: VQVAE, precision: str) -> tuple[VAR, VQVAE]:
    """The models as a ``precision`` export computes: the graphs' precision is the modules' dtype
    (copies are converted, never the caller's models). ONNX Conv takes bfloat16 only from opset 22
    (varrt pins 18-20 for TensorRT 10), so a bfloat16 export keeps the decoder (a small share of
    the time) in float32; float16 converts it too."""
    dtype = DTYPES[precision]
    var_x = var if dtype == torch.float32 else copy.deepcopy(var).to(dtype)
    if dtype != torch.float16:
        return var_x, vqvae
    vqvae_x = copy.deepcopy(vqvae)
    vqvae_x.decoder.to(dtype)
    vqvae_x.post_quant_conv.to(dtype)
    return var_x, vqvae_x


def trace_spec(component: str, var: VAR, vqvae: VQVAE, precision: str, blocks: tuple[int, ...] | None) -> GraphSpec:
    """Shapes to trace with: small, distinct, never 0 or 1 on a symbolic dim."""
    if component == "conditioner":
        return conditioner_spec(var.cfg, 3)
    if component in ("transformer", "transformer_probe", "transformer_layers"):
        # blocks is the layer set of a transformer_layers graph and None for the other two
        probe = component == "transformer_probe"
        shape = StepShape(rows=3, tokens=5, outputs=7, capacity=11, probe=probe, layers=blocks)
        return transformer_spec(var.cfg, shape, precision)
    if component == "transformer_fastvar":
        return fastvar_spec(var.cfg, FastVarShape(rows=3, tokens=7, keep=5, capacity=11, blocks=blocks), precision)
    return decoder_spec(vqvae.cfg, 3, side=vqvae.cfg.patch_nums[-1])


def components_of(graphs: Sequence[GraphSpec], order: Sequence[str] = COMPONENTS) -> dict[str, tuple[int, ...] | None]:
    """The components a graph list needs, in the family's export ``order``, with their static
    block structure (FastVAR's pruned range, a layer set)."""
    out: dict[str, tuple[int, ...] | None] = {}
    for g in graphs:
        if out.setdefault(g.component, g.blocks) != g.blocks:
            raise ExportError(
                f"one artifact holds one {g.component} graph; got blocks {out[g.component]} "
                f"and {g.blocks} (export the two policies separately)"
            )
    unknown = sorted(set(out) - set(order))
    if unknown:
        raise ExportError(f"components {unknown} are not among {list(order)}")
    return {c: out[c] for c in order if c in out}


def export_artifact(
    var: VAR,
    vqvae: VQVAE,
    graphs: Sequence[GraphSpec],
    out: Path,
    *,
    config: ExportConfig,
    batch: int,
    kv_capacity: int,
    plans: list[dict],
    source: dict,
    export_key: str,
    request: dict | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Export ``var`` + ``vqvae`` for the static ``graphs`` into the directory ``out``."""
    say = progress or (lambda _msg: None)
    out = Path(out)
    work = staging_dir(out)
    try:
        var_x, vqvae_x = precision_models(var, vqvae, config.precision)
        raw = work / "raw"
        raw.mkdir()
        exported, logs = {}, []
        with torch.no_grad():
            for comp, blocks in components_of(graphs).items():
                say(f"export {comp}")
                path = raw / f"{comp}.onnx"
                module = graph_module(comp, var_x, vqvae_x, blocks)
                spec = trace_spec(comp, var, vqvae, config.precision, blocks)
                logs.append(f"== {comp}\n" + export_component(module, spec, path, config.opset))
                exported[comp] = path
        components, static = write_graphs(exported, graphs, work, logs, say)

        quant = {k: v.float() for k, v in vqvae.quantize.state_dict().items()}
        save_safetensors(quant, work / QUANTIZER, {"vqvae": vqvae.cfg.to_dict()})
        manifest = Manifest(
            var=var.cfg,
            vqvae=vqvae.cfg,
            precision=config.precision,
            opset=config.opset,
            batch=batch,
            kv_capacity=kv_capacity,
            plans=plans,
            graphs=list(graphs),
            components=components,
            static_graphs=static,
            files=file_entries(work, (WEIGHTS, QUANTIZER)),
            source=source,
            export_key=export_key,
            request=request or {},
            validation={"onnx_checker": "passed", "tensorrt_ops": "passed"},
            environment=environment(),
        )
        manifest.write(work)
        publish(work, out)
        return manifest
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_graphs(
    exported: dict[str, Path], graphs: Sequence[GraphSpec], work: Path, logs: list[str], say: Progress
) -> tuple[dict[str, dict], dict[str, str]]:
    """From the traced components in ``exported`` to the artifact's graphs: one shared weights file,
    the component graphs (with their static block structure, where they have one), every static
    shape, all checked. Returns (components, static graphs)."""
    say("merge weights")
    models = merge_weights(exported, work, WEIGHTS)
    shutil.rmtree(next(iter(exported.values())).parent)
    (work / "export.log").write_text("\n".join(logs))
    components = {}
    for comp, model in models.items():
        onnx.save_model(model, str(work / f"{comp}.onnx"))
        components[comp] = {
            "file": f"{comp}.onnx",
            "sha256": file_sha256(work / f"{comp}.onnx", use_cache=False),
            "weight_bytes": weight_bytes(model),
        }
    for spec in graphs:
        if spec.blocks is not None:
            components[spec.component]["blocks"] = list(spec.blocks)
    static = {}
    for spec in graphs:
        say(f"specialise {spec.name}")
        onnx.save_model(specialize(models[spec.component], spec), str(work / f"{spec.name}.onnx"))
        static[spec.name] = f"{spec.name}.onnx"
    say("check graphs (ONNX checker, TensorRT op support)")
    check_graphs(work, [*(c["file"] for c in components.values()), *static.values()])
    return components, static


def file_entries(work: Path, names: Sequence[str]) -> dict[str, dict]:
    return {n: {"sha256": file_sha256(work / n, use_cache=False), "bytes": (work / n).stat().st_size} for n in names}


def staging_dir(out: Path) -> Path:
    """A fresh temporary directory beside ``out``: an export is assembled there, then renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def publish(work: Path, out: Path) -> None:
    """Make the finished artifact readable by all (mkdtemp and safetensors create owner-only
    entries; an artifact is meant to be shared) and move it into place."""
    os.chmod(work, 0o755)
    for f in work.iterdir():
        os.chmod(f, 0o644)
    _replace_dir(work, out)


def check_graphs(directory: Path, files: Sequence[str]) -> None:
    """onnx.checker (on the path, so external data resolves) and TensorRT's op matrix, every graph."""
    problems = []
    for rel in files:
        path = directory / rel
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as e:
            problems.append(f"{rel}: ONNX checker: {str(e).splitlines()[0]}")
        for p in unsupported_ops(onnx.load(str(path), load_external_data=False)):
            problems.append(f"{rel}: {p}")
    if problems:
        raise ExportError("exported graphs failed their checks:\n  " + "\n  ".join(problems))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished artifact into place; an older one at ``dst`` is swapped out, then removed."""
    old = None
    if dst.exists():
        if not (dst / "manifest.json").exists() and any(dst.iterdir()):
            raise ArtifactError(f"{dst} exists and is not a varrt artifact; choose another --out or empty it")
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
