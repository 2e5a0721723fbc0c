"""Write an Infinity export artifact: the components' graphs, their static shapes, one weights file.

Same layout, manifest and checks as a VAR artifact (:mod:`varrt.export.exporter`): each component
is traced once with symbolic dims, every static shape a plan needs is the same graph with fixed
dims, all weights live once in ``weights.bin``, and every graph passes the ONNX checker and the
TensorRT op check. The directory is assembled under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from varrt.export.artifact import WEIGHTS, Manifest, environment
from varrt.export.bsq_vae import BSQVAE
from varrt.export.exporter import (
    ExportConfig,
    Progress,
    components_of,
    file_entries,
    publish,
    staging_dir,
    write_graphs,
)
from varrt.export.graphs import DTYPES, GraphSpec
from varrt.export.infinity import Infinity
from varrt.export.infinity_config import InfinitySchedule
from varrt.export.infinity_graphs import (
    INFINITY_COMPONENTS,
    InfinityFastVarShape,
    TextStepShape,
    infinity_conditioner_spec,
    infinity_decoder_spec,
    infinity_fastvar_spec,
    infinity_graph_module,
    infinity_transformer_spec,
    text_encoder_spec,
)
from varrt.export.onnx_export import export_component


def trace_spec(
    component: str, model: Infinity, vae: BSQVAE, precision: str, blocks: tuple[int, ...] | None = None
) -> GraphSpec:
    """Shapes to trace with: small, pairwise distinct, never 0 or 1 on a symbolic dim. ``blocks``:
    the layer set of a layer-set graph, the pruned range of a FastVAR graph."""
    cfg = model.cfg
    lt = min(13, cfg.text_maxlen)
    if component == "text_encoder":
        return text_encoder_spec(cfg.text_channels, 3, lt)
    if component == "infinity_conditioner":
        return infinity_conditioner_spec(cfg, 3, lt, precision)
    if component in ("infinity_transformer", "infinity_transformer_probe", "infinity_transformer_layers"):
        probe = component == "infinity_transformer_probe"
        shape = TextStepShape(3, 5, 7, 11, probe=probe, layers=blocks, text=lt)
        return infinity_transformer_spec(cfg, shape, precision)
    if component == "infinity_transformer_fastvar":
        return infinity_fastvar_spec(cfg, InfinityFastVarShape(3, 7, 5, 11, blocks, text=lt), precision)
    return infinity_decoder_spec(vae.cfg, 2, (4, 6))


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
) -> Manifest:
    """Export Infinity (+ its BSQ decoder and T5 encoder) for the static ``graphs`` into ``out``."""
    say = progress or (lambda _msg: None)
    out = Path(out)
    dtype = DTYPES[config.precision]
    work = staging_dir(out)
    try:
        # the blocks carry the precision; the text path, AdaLN and head stay fp32 (the official build)
        model_x = model
        if dtype != model.mat_dtype:
            model_x = copy.deepcopy(model)
            for chunk in model_x.block_chunks:
                chunk.to(dtype)
        raw = work / "raw"
        raw.mkdir()
        exported, logs = {}, []
        with torch.no_grad():
            for comp, blocks in components_of(graphs, INFINITY_COMPONENTS).items():
                say(f"export {comp}")
                module = infinity_graph_module(comp, model_x, vae, text_encoder, blocks)
                spec = trace_spec(comp, model, vae, config.precision, blocks)
                path = raw / f"{comp}.onnx"
                dim_max = {"text": model.cfg.text_maxlen}
                logs.append(f"== {comp}\n" + export_component(module, spec, path, config.opset, dim_max))
                exported[comp] = path
        components, static = write_graphs(exported, graphs, work, logs, say)
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
            static_graphs=static,
            files=file_entries(work, (WEIGHTS,)),
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
