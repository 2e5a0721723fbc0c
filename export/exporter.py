"""Write an export artifact: the component graphs (from the checkpoint's pack), one weights file, checks.

The export cache (``runtime/artifacts.py``) assembles it in a staging folder, validates it there and
only then renames it into place (``export/staging.py``), so a crash, a Ctrl-C or a failed check never
leaves a half-written or unvalidated artifact where the next run would reuse it.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from varrt.export.artifact import QUANTIZER, WEIGHTS, Manifest, environment, file_sha256
from varrt.export.checkpoint import save_safetensors
from varrt.export.graphs import (
    COMPONENTS,
    DTYPES,
    FastVarShape,
    GraphSpec,
    StepShape,
    ToProVarShape,
    conditioner_spec,
    decoder_spec,
    fastvar_spec,
    graph_module,
    toprovar_spec,
    transformer_spec,
)
from varrt.export.onnx_export import export_component, specialize, weight_bytes
from varrt.export.pack import Pack
from varrt.export.quantize import (
    DECODER_GATE,
    DECODER_MODES,
    INT8_DECODER,
    QUANTIZED,
    TENSORRT_QUANTIZED,
    check_precision,
    io_precision,
    quantize_component,
    quantize_decoder,
    quantized_components,
)
from varrt.export.stagevar import stagevar_spec, stagevar_trace_shape
from varrt.export.trace_pool import Trace, move_graph, trace_side_by_side
from varrt.export.trt_ops import unsupported_ops
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The export produced graphs that fail a check (ONNX checker, TensorRT op support, static shapes)."""


@dataclass(frozen=True)
class ExportConfig:
    precision: str = "float32"  # matmul / KV dtype, or a quantized recipe (export/quantize.py)
    opset: int = 20  # native LayerNormalization (17) and Gelu (20); TensorRT 10 parses 9-20
    calibrate: int | None = None  # quantized precisions: calibration generations (None: the default)
    decoder: str = "auto"  # int8 / int8-cpu: the decoder gated int8 (auto), int8 ungated, or fp32

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.calibrate is not None and self.calibrate < 1:
            raise ValueError(f"--calibrate takes the number of calibration generations (>= 1), got {self.calibrate}")
        if self.decoder not in DECODER_MODES:
            raise ValueError(f"--decoder-precision {self.decoder!r}: choose one of {', '.join(DECODER_MODES)}")
        if self.decoder == "int8" and self.precision not in INT8_DECODER:
            raise ValueError(
                f"--decoder-precision int8 needs --precision {' or '.join(INT8_DECODER)} (got {self.precision})"
            )
        calibrated = ("int8", "fp8", *(("int8-cpu",) if self.decoder != "fp32" else ()))
        if self.calibrate is not None and self.precision not in calibrated:
            raise ValueError(
                f"--calibrate sets the calibration of an int8 / fp8 export (or int8-cpu's int8 decoder); "
                f"precision {self.precision} has none"
            )
        if not 18 <= self.opset <= 20:
            raise ValueError(f"opset {self.opset}: varrt exports opset 18-20 (TensorRT 10's parser covers 9-20)")


def precision_models(var: VAR, vqvae: VQVAE, precision: str) -> tuple[VAR, VQVAE]:
    """The models as a ``precision`` export computes: the graphs' precision is the modules' dtype
    (copies are converted, never the caller's models). ONNX Conv takes bfloat16 only from opset 22
    (varrt pins 18-20 for TensorRT 10), so a bfloat16 export keeps the decoder (a small share of
    the time) in float32; float16 converts it too. Quantized precisions trace in float32 (they are
    quantized after export)."""
    dtype = DTYPES[io_precision(precision)]
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
        shape = StepShape(rows=3, tokens=5, outputs=7, capacity=11, probe=probe, layers=blocks, past=9)
        return transformer_spec(var.cfg, shape, precision)
    if component == "transformer_fastvar":
        shape = FastVarShape(rows=3, tokens=7, keep=5, capacity=11, blocks=blocks, past=9)
        return fastvar_spec(var.cfg, shape, precision)
    if component == "transformer_toprovar":
        keeps = (5,) * (var.cfg.depth - blocks[0] - 1)
        return toprovar_spec(var.cfg, ToProVarShape(3, 7, keeps, 11, entropy_block=blocks[0], past=9), precision)
    if component == "transformer_chunks":
        shape = StepShape(rows=3, tokens=5, outputs=7, capacity=11, chunk=blocks[0], past=9)
        return transformer_spec(var.cfg, shape, precision)
    if component == "transformer_stagevar":
        return stagevar_spec(var.cfg, stagevar_trace_shape(blocks, capacity=11), precision)
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


@dataclass(frozen=True, eq=False)
class VarTracer:
    """Traces one VAR component to ONNX: a picklable ``Trace``, so that worker processes can
    trace the components side by side (export/trace_pool.py). ``var_x`` / ``vqvae_x``: the models
    at the export's precision; ``var`` / ``vqvae`` give the trace shapes."""

    var: VAR
    vqvae: VQVAE
    var_x: VAR
    vqvae_x: VQVAE
    precision: str
    opset: int

    def __call__(self, comp: str, blocks: tuple[int, ...] | None, path: Path) -> str:
        module = graph_module(comp, self.var_x, self.vqvae_x, blocks)
        spec = trace_spec(comp, self.var, self.vqvae, self.precision, blocks)
        with torch.no_grad():
            return export_component(module, spec, path, self.opset)


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
    pack: Pack | None = None,
    calibration: dict[str, list[dict]] | None = None,
    quantization: dict | None = None,
    decoder: str = "fp32",
    decoder_gate: DecoderGate | None = None,
) -> Manifest:
    """Write the artifact of ``var`` + ``vqvae`` for the static ``graphs`` into the folder ``out``.

    The components come from ``pack`` (traced there if it lacks them) or, without one, are traced
    for this artifact alone. A quantized precision rewrites the transformer components with
    ``calibration`` (feeds per component, see runtime/calibration.py) into the artifact's own files;
    ``quantization`` (recipe and calibration set) goes into the manifest. ``decoder`` is the
    decoder's plan (``quantize.decoder_plan``): ``int8`` quantizes it too, ``gated`` only where
    ``decoder_gate(fp32 graph, int8 graph)`` finds its images close enough. ``out`` is written in
    place: the export cache (:func:`varrt.runtime.artifacts.ensure_artifact`) passes a staging
    folder, validates it and then publishes it."""
    say = progress or (lambda _msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    var_x, vqvae_x = precision_models(var, vqvae, config.precision)
    # a quantized precision traces in fp32 (quantized after)
    trace = VarTracer(var, vqvae, var_x, vqvae_x, io_precision(config.precision), config.opset)
    quantization = dict(quantization or {})
    quantize = quantizer(config.precision, calibration or {}, quantization, say, decoder, decoder_gate)
    trt = tensorrt_checked(config.precision)
    components, files = write_components(components_of(graphs), trace, graphs, out, pack, say, quantize, trt)
    quant = {k: v.float() for k, v in vqvae.quantize.state_dict().items()}
    save_safetensors(quant, out / QUANTIZER, {"vqvae": vqvae.cfg.to_dict()})
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
        files={**files, **file_entries(out, (QUANTIZER,))},
        source=source,
        export_key=export_key,
        request=request or {},
        validation={**CHECKS_PASSED, "tensorrt_ops": tensorrt_validation(config.precision)},
        environment=environment(),
        quantization=quantization,
    )
    manifest.write(out)
    return manifest


#: what every written artifact has passed (``write_components`` raises otherwise)
CHECKS_PASSED = {"onnx_checker": "passed", "tensorrt_ops": "passed", "static_shapes": "passed"}
#: the decoder's fidelity gate: (fp32 graph, int8 graph) -> {"ssim": {...}, "psnr": {...}, ...}
DecoderGate = Callable[[Path, Path], dict]


@dataclass(frozen=True, eq=False)
class Quantizer:
    """A quantized precision's rewrite of the components it takes (``components``): calling it on
    (component, fp32 graph, destination) writes the destination and returns True, or returns False
    where the component stays the pack's fp32 graph (a decoder that fails its gate). What each
    component got goes into ``record`` (the manifest's ``quantization["components"]``)."""

    precision: str
    feeds: dict[str, list[dict]]
    record: dict
    say: Progress
    decoder: str = "fp32"  # the decoder's plan (quantize.decoder_plan)
    gate: DecoderGate | None = None

    @property
    def components(self) -> tuple[str, ...]:
        return quantized_components(self.decoder)

    def __call__(self, comp: str, src: Path, dst: Path) -> bool:
        if comp != "decoder":
            self.say(f"quantize {comp} ({self.precision})")
            self.record[comp] = quantize_component(src, dst, self.precision, self.feeds.get(comp))
            return True
        self.say(f"quantize the decoder ({self.precision}, {'gated' if self.decoder == 'gated' else 'not gated'})")
        done = quantize_decoder(src, dst, self.precision, self.feeds.get("decoder"))
        self.record[comp] = done
        if self.decoder != "gated":
            done["precision"] = "int8 (not gated: --decoder-precision int8)"
            return True
        fidelity = self.gate(src, dst)
        ssim = fidelity["ssim"]["mean"]
        passed = ssim >= DECODER_GATE
        done.update(fidelity_vs_fp32=fidelity, precision="int8" if passed else "fp32")
        verdict = "keeps int8" if passed else "stays fp32"
        self.say(f"decoder gate: mean SSIM {ssim:.4f} vs fp32 on {fidelity['images']} held-out images: {verdict}")
        return passed


def quantizer(
    precision: str,
    feeds: dict[str, list[dict]],
    quantization: dict,
    say: Progress,
    decoder: str = "fp32",
    gate: DecoderGate | None = None,
) -> Quantizer | None:
    """The rewrite of a quantized ``precision`` (None for the others)."""
    if precision not in QUANTIZED:
        return None
    if decoder == "gated" and gate is None:
        raise ValueError("a gated int8 decoder needs its gate (held-out generations)")
    return Quantizer(precision, feeds, quantization.setdefault("components", {}), say, decoder, gate)


def tensorrt_checked(precision: str) -> bool:
    """Whether the graphs of ``precision`` are meant for TensorRT (and so checked against its ops)."""
    return precision not in QUANTIZED or precision in TENSORRT_QUANTIZED


def tensorrt_validation(precision: str) -> str:
    if tensorrt_checked(precision):
        return "passed"
    return f"not checked: {precision} is ONNX Runtime's CPU form (DynamicQuantizeLinear, MatMulInteger), not TensorRT's"


def write_components(
    wanted: dict[str, tuple[int, ...] | None],
    trace: Trace,
    graphs: Sequence[GraphSpec],
    work: Path,
    pack: Pack | None,
    say: Progress,
    quantize: Quantizer | None = None,
    trt: bool = True,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """The component graphs of an artifact in ``work``, from ``pack`` (traced there by
    ``trace(component, blocks, path) -> log`` when it lacks them), all pointing into one weights.bin,
    and checked: the ONNX checker and (``trt``) TensorRT's op matrix on every file, strict shape
    inference at every static shape of ``graphs``.

    With ``quantize``, the transformer components are rewritten from the pack's fp32 graphs into
    the artifact's own ``<component>.onnx`` + ``.onnx.data``: their weights are not the checkpoint's,
    so they never go into (or share) the pack. Returns (the manifest's components, its files)."""
    private = pack is None
    if private:
        pack = Pack(work / ".pack")
    missing = [(c, b) for c, b in wanted.items() if not pack.has(c, b, say)]
    ahead = work / ".traces"
    try:
        traced = trace_side_by_side(trace, missing, ahead, say) if len(missing) > 1 else {}

        def trace_into(comp: str, blocks: tuple[int, ...] | None, path: Path) -> str:
            if (comp, blocks) not in traced:
                return trace(comp, blocks, path)
            src, log = traced[(comp, blocks)]
            move_graph(src, path)
            return log

        packed = {
            comp: pack.component(comp, blocks, lambda path, c=comp, b=blocks: trace_into(c, b, path), say)
            for comp, blocks in wanted.items()
        }
    finally:
        shutil.rmtree(ahead, ignore_errors=True)
    own: dict[str, tuple[dict, dict]] = {}  # the rewritten components: their files are the artifact's
    for comp in [c for c in packed if quantize is not None and c in quantize.components]:
        rewritten = quantized_component(comp, pack.root / f"{packed[comp].stem}.onnx", work, quantize)
        if rewritten is not None:
            own[comp] = rewritten
    components, weights = pack.place({c: e for c, e in packed.items() if c not in own}, work)
    files = {WEIGHTS: weights}
    for comp, (meta, data) in own.items():
        components[comp], files[f"{comp}.onnx.data"] = meta, data
    components = {c: components[c] for c in packed}  # the export order
    if private:
        shutil.rmtree(pack.root)
    (work / "export.log").write_text("\n".join(f"== {c}\n{p.log}" for c, p in packed.items()))
    for comp, blocks in wanted.items():
        if blocks is not None:
            components[comp]["blocks"] = list(blocks)
    checks = "ONNX checker" + (", TensorRT op support" if trt else "")
    say(f"check graphs ({checks}, shapes at {len(graphs)} static shapes)")
    check_graphs(work, [c["file"] for c in components.values()], trt=trt)
    check_static_shapes(work, components, graphs)
    return components, files


def quantized_component(comp: str, fp32: Path, work: Path, quantize: Quantizer) -> tuple[dict, dict] | None:
    """``comp``'s quantized graph in ``work`` from the fp32 graph ``fp32`` (a pack's): the quantizer
    reads a private copy (it writes temporary files beside its input, which a shared pack must not
    get). Returns the manifest's component entry and the entry of its weights file, or None where
    the quantizer keeps the fp32 graph (nothing of it is left in ``work``)."""
    src = Path(tempfile.mkdtemp(prefix=f".{comp}.fp32-", dir=work)) / f"{comp}.onnx"
    dst = work / f"{comp}.onnx"
    try:
        onnx.save_model(onnx.load(str(fp32)), str(src), save_as_external_data=True, location=f"{comp}.onnx.data")
        kept = quantize(comp, src, dst)
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)
    if not kept:
        for f in (dst, dst.with_name(dst.name + ".data")):
            f.unlink(missing_ok=True)
        return None
    data = file_entries(work, (f"{comp}.onnx.data",))[f"{comp}.onnx.data"]
    meta = {
        "file": dst.name,
        "sha256": file_sha256(dst, use_cache=False),
        "weight_bytes": weight_bytes(onnx.load(str(dst), load_external_data=False)),
        "weights_sha256": data["sha256"],
    }
    return meta, data


def file_entries(work: Path, names: Sequence[str]) -> dict[str, dict]:
    return {n: {"sha256": file_sha256(work / n, use_cache=False), "bytes": (work / n).stat().st_size} for n in names}


def check_graphs(directory: Path, files: Sequence[str], trt: bool = True) -> None:
    """onnx.checker (on the path, so external data resolves) and TensorRT's op matrix (unless the
    graphs are ONNX Runtime's own form), every graph."""
    problems = []
    for rel in files:
        path = directory / rel
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as e:
            problems.append(f"{rel}: ONNX checker: {str(e).splitlines()[0]}")
        model = onnx.load(str(path), load_external_data=False)
        for p in unsupported_ops(model, str(path.parent)) if trt else ():
            problems.append(f"{rel}: {p}")
    if problems:
        raise ExportError("exported graphs failed their checks:\n  " + "\n  ".join(problems))


def check_static_shapes(directory: Path, components: dict[str, dict], graphs: Sequence[GraphSpec]) -> None:
    """Each component graph with its dims fixed to every static shape a plan needs, through strict
    shape inference, in memory: a graph that cannot take a shape of the contract (an output of
    another size, a broadcast that fails) fails the export here, not in a backend."""
    models = {c: onnx.load(str(directory / m["file"]), load_external_data=False) for c, m in components.items()}
    problems = []
    for spec in graphs:
        try:
            fixed = specialize(models[spec.component], spec)
            onnx.shape_inference.infer_shapes(fixed, check_type=True, strict_mode=True, data_prop=True)
        except (onnx.shape_inference.InferenceError, ValueError) as e:
            problems.append(f"{spec.name}: {str(e).splitlines()[0]}")
    if problems:
        raise ExportError("exported graphs do not take their static shapes:\n  " + "\n  ".join(problems))
