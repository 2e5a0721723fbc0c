"""Write an Infinity export artifact: the components' graphs (from the checkpoint's pack), one weights file.

Same layout, manifest, pack and checks as a VAR artifact (:mod:`varrt.export.exporter`): each
component is traced once with symbolic dims, every static shape a plan needs passes strict shape
inference in memory, all weights live once in ``weights.bin``, and every graph passes the ONNX
checker and the TensorRT op check. The export cache stages, validates and publishes it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from varrt.export.artifact import Manifest, environment
from varrt.export.bsq_vae import BSQVAE
from varrt.export.exporter import CHECKS_PASSED, ExportConfig, Progress, components_of, write_components
from varrt.export.graphs import DTYPES, GraphSpec
from varrt.export.infinity import Infinity
from varrt.export.infinity_config import InfinitySchedule
from varrt.export.infinity_graphs import (
    INFINITY_COMPONENTS,
    InfinityFastVarShape,
    InfinityStageVarShape,
    InfinityToProVarShape,
    TextStepShape,
    infinity_conditioner_spec,
    infinity_decoder_spec,
    infinity_fastvar_spec,
    infinity_graph_module,
    infinity_stagevar_spec,
    infinity_toprovar_spec,
    infinity_transformer_spec,
    text_encoder_spec,
)
from varrt.export.onnx_export import export_component
from varrt.export.pack import Pack
from varrt.export.quantize import io_precision
from varrt.export.stagevar import stagevar_trace_shape


def trace_spec(
    component: str, model: Infinity, vae: BSQVAE, precision: str, blocks: tuple[int, ...] | None = None
) -> GraphSpec:
    """Shapes to trace with: small, pairwise distinct, never 0 or 1 on a symbolic dim. ``blocks``:
    the layer set of a layer-set graph, the pruned range of a FastVAR graph, (entropy block,) of
    a ToProVAR graph."""
    cfg = model.cfg
    lt = min(13, cfg.text_maxlen)
    if component == "text_encoder":
        return text_encoder_spec(cfg.text_channels, 3, lt)
    if component == "infinity_conditioner":
        return infinity_conditioner_spec(cfg, 3, lt, precision)
    if component in ("infinity_transformer", "infinity_transformer_probe", "infinity_transformer_layers"):
        probe = component == "infinity_transformer_probe"
        shape = TextStepShape(3, 5, 7, 11, probe=probe, layers=blocks, past=9, text=lt)
        return infinity_transformer_spec(cfg, shape, precision)
    if component == "infinity_transformer_fastvar":
        return infinity_fastvar_spec(cfg, InfinityFastVarShape(3, 7, 5, 11, blocks, past=9, text=lt), precision)
    if component == "infinity_transformer_toprovar":
        keeps = (5,) * (cfg.depth - blocks[0] - 1)
        shape = InfinityToProVarShape(3, 7, keeps, 11, blocks[0], past=9, text=lt)
        return infinity_toprovar_spec(cfg, shape, precision)
    if component == "infinity_transformer_chunks":
        shape = TextStepShape(3, 5, 7, 11, chunk=blocks[0], past=9, text=lt)
        return infinity_transformer_spec(cfg, shape, precision)
    if component == "infinity_transformer_stagevar":
        shape = InfinityStageVarShape(**asdict(stagevar_trace_shape(blocks, 11, lt)), text=lt)
        return infinity_stagevar_spec(cfg, shape, precision)
    return infinity_decoder_spec(vae.cfg, 2, (4, 6))


def precision_model(model: Infinity, precision: str) -> Infinity:
    """The model as a ``precision`` export computes it: the blocks carry the precision (matmuls and
    KV cache); the text path, AdaLN and head stay float32, as in the official build. A copy is
    converted, never the caller's model. The eager backends use it too, so that torch computes what
    an export of that precision does (a quantized precision: float32, as on VAR)."""
    dtype = DTYPES[io_precision(precision)]
    if dtype == model.mat_dtype:
        return model
    model_x = copy.deepcopy(model)
    for chunk in model_x.block_chunks:
        chunk.to(dtype)
    return model_x


@dataclass(frozen=True, eq=False)
class InfinityTracer:
    """Traces one Infinity component to ONNX: a picklable ``Trace`` (export/trace_pool.py).
    ``model_x``: the model at the export's precision; ``model`` gives the trace shapes."""

    model: Infinity
    vae: BSQVAE
    text_encoder: torch.nn.Module
    model_x: Infinity
    precision: str
    opset: int

    def __call__(self, comp: str, blocks: tuple[int, ...] | None, path: Path) -> str:
        module = infinity_graph_module(comp, self.model_x, self.vae, self.text_encoder, blocks)
        spec = trace_spec(comp, self.model, self.vae, self.precision, blocks)
        with torch.no_grad():
            return export_component(module, spec, path, self.opset, {"text": self.model.cfg.text_maxlen})


def export_infinity_artifact(
    model: Infinity,
    vae: BSQVAE,
    text_encoder,
    graphs: Sequence[GraphSpec],
    out: Path,
    *,
    config: ExportConfig,
    schedule: InfinitySchedule,
    batch: int,
    kv_capacity: int,
    plans: list[dict],
    source: dict,
    export_key: str = "",
    request: dict | None = None,
    progress: Progress | None = None,
    pack: Pack | None = None,
) -> Manifest:
    """Write the artifact of Infinity (+ its BSQ decoder and T5 encoder) for the static ``graphs``
    into the folder ``out`` (see :func:`varrt.export.exporter.export_artifact` for ``pack``)."""
    say = progress or (lambda _msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_x = precision_model(model, config.precision)

    trace = InfinityTracer(model, vae, text_encoder, model_x, config.precision, config.opset)
    wanted = components_of(graphs, INFINITY_COMPONENTS)
    components, files = write_components(wanted, trace, graphs, out, pack, say)
    manifest = Manifest(
        var=None,
        vqvae=None,
        infinity=model.cfg,
        bsq_vae=vae.cfg,
        infinity_schedule=schedule,
        precision=config.precision,
        opset=config.opset,
        batch=batch,
        kv_capacity=kv_capacity,
        plans=plans,
        graphs=list(graphs),
        components=components,
        files=files,
        source=source,
        export_key=export_key,
        request=request or {},
        validation=dict(CHECKS_PASSED),
        environment=environment(),
    )
    manifest.write(out)
    return manifest
