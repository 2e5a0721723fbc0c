"""torch -> ONNX for one component, and the same graph at each static shape (in memory, for checks).

Each component is exported once with the dynamo exporter and symbolic dims (rows, tokens,
capacity, batch, side): its per-scale constants are gathers on ``pos_idx`` and masks on
``kv_bias``, so every scale is the same graph at another shape. That one graph is what ONNX Runtime
runs (one session, weights loaded once) and what TensorRT builds with one profile per shape.
:func:`specialize` fixes every dim to one static shape; the exporter runs strict shape inference on
each specialisation (a graph that cannot take a shape the plans need fails the export) and writes
none of them: the manifest's graph list is the static contract. The weights of all components go
once into their checkpoint's pack (:mod:`varrt.export.pack`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import inspect
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from varrt.export.graphs import GraphSpec
from varrt.export.onnx_passes import merge_slices

#: symbolic dims of each component's inputs (axis -> dim name)
_CONDITIONED = {"sos": {0: "rows"}, "ada": {0: "rows"}, "head_ada": {0: "rows"}, "kv": {0: "rows", 4: "capacity"}}
_TOKENS = {"x": {0: "rows", 1: "tokens"}, "pos_idx": {0: "rows", 1: "tokens"}}
_STEP = {
    **_TOKENS,
    **_CONDITIONED,
    "kv_bias": {0: "past"},
    "fill_idx": {0: "rows", 1: "outputs"},
    "fill_mask": {0: "rows", 1: "outputs"},
    "restore": {0: "rows", 1: "outputs"},
}
_INFINITY_TOKENS = {
    "x": {0: "rows", 1: "tokens"},
    "pos": {0: "rows", 1: "tokens"},
    "ca_kv": {0: "rows", 4: "text"},
    "text_bias": {0: "rows", 1: "text"},
}
_INFINITY_STEP = {**_STEP, **_INFINITY_TOKENS}
_FASTVAR = {"kv_bias": {1: "past"}, "keep_rank": {0: "keep"}, "deltas": {0: "rows", 3: "tokens"}}
#: ToProVAR: one rank input per block after the entropy block, each with its own kept count
MAX_BLOCKS = 128
_TOPROVAR = {"kv_bias": {1: "past"}, **{f"keep_rank_{i}": {0: f"keep{i}"} for i in range(MAX_BLOCKS)}}
#: StageVAR's low-rank step: one projection per chunk, each rank its own dim
MAX_CHUNKS = 128
_STAGEVAR = {
    "kv_bias": {1: "past"},
    "gumbel": {0: "rows", 2: "tokens"},
    "chunk_restore": {0: "rows", 2: "tokens"},
    **{f"proj{c}": {0: "rows", 1: "tokens", 2: f"rank{c}"} for c in range(MAX_CHUNKS)},
}
COMPONENT_DIMS: dict[str, dict[str, dict[int, str]]] = {
    "conditioner": {"labels": {0: "rows"}},
    # the probe and layer-set graphs take the plain step's inputs
    "transformer": _STEP,
    "transformer_probe": _STEP,
    "transformer_layers": _STEP,
    "transformer_fastvar": {**_TOKENS, **_CONDITIONED, **_FASTVAR},
    "transformer_toprovar": {**_TOKENS, **_CONDITIONED, **_TOPROVAR},
    "transformer_chunks": _STEP,
    "transformer_stagevar": {**_TOKENS, **_CONDITIONED, **_STAGEVAR},
    "decoder": {"f_hat": {0: "batch", 2: "side", 3: "side"}},
    # Infinity
    "text_encoder": {"input_ids": {0: "rows", 1: "text"}, "attention_mask": {0: "rows", 1: "text"}},
    "infinity_conditioner": {
        "text": {0: "rows", 1: "text"},
        "text_mask": {0: "rows", 1: "text"},
        "uncond": {0: "rows"},
    },
    # the probe and layer-set graphs take the plain step's inputs
    "infinity_transformer": _INFINITY_STEP,
    "infinity_transformer_probe": _INFINITY_STEP,
    "infinity_transformer_layers": _INFINITY_STEP,
    "infinity_transformer_fastvar": {**_INFINITY_TOKENS, **_CONDITIONED, **_FASTVAR},
    "infinity_transformer_toprovar": {**_INFINITY_TOKENS, **_CONDITIONED, **_TOPROVAR},
    "infinity_transformer_chunks": _INFINITY_STEP,
    "infinity_transformer_stagevar": {**_INFINITY_TOKENS, **_CONDITIONED, **_STAGEVAR},
    "infinity_decoder": {"codes": {0: "batch", 2: "height", 3: "width"}},
}
_DIM_MAX = {
    "rows": 4096,
    "tokens": 1 << 16,
    "outputs": 1 << 16,
    "keep": 1 << 16,
    "capacity": 1 << 17,
    "past": 1 << 17,
    "batch": 4096,
    "side": 1024,
    "text": 512,
    "height": 1024,
    "width": 1024,
    **{f"keep{i}": 1 << 16 for i in range(MAX_BLOCKS)},
    **{f"rank{c}": 1 << 16 for c in range(MAX_CHUNKS)},
}
ALIGN = 64  # byte alignment of every tensor in weights.bin


def example_inputs(spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: the right dtypes and valid indices (shapes: see ``trace_spec``)."""
    out = []
    for t in spec.inputs:
        if t.name in ("pos_idx", "pos") or t.name.startswith("keep_rank"):
            out.append(torch.arange(1, 1 + t.shape[-1], dtype=torch.int64).expand(t.shape).contiguous())
        elif t.name in ("input_ids", "attention_mask", "text_mask"):
            out.append(torch.ones(t.shape, dtype=t.torch_dtype))
        else:
            out.append(torch.zeros(t.shape, dtype=t.torch_dtype))
    return tuple(out)


def export_component(
    module: torch.nn.Module, example: GraphSpec, path: Path, opset: int, dim_max: dict[str, int] | None = None
) -> str:
    """Export ``module`` with symbolic dims to ``path`` (+ ``path.data``); returns the exporter log.
    ``dim_max`` lowers a dim's bound where the model has one (Infinity's text length: its
    ``cfg_uncond`` rows)."""
    from torch.export import Dim

    dims = COMPONENT_DIMS[example.component]
    bounds = {**_DIM_MAX, **(dim_max or {})}
    made: dict[str, Dim] = {}
    dynamic_shapes = {
        t.name: {ax: made.setdefault(d, Dim(d, min=1, max=bounds[d])) for ax, d in dims.get(t.name, {}).items()}
        for t in example.inputs
    }
    dynamic_shapes = _by_parameter(module, dynamic_shapes)
    log = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                example_inputs(example),
                input_names=[t.name for t in example.inputs],
                output_names=[t.name for t in example.outputs],
                opset_version=opset,
                dynamo=True,
                external_data=True,
                optimize=True,
                dynamic_shapes=dynamic_shapes,
            )
            program.save(str(path), external_data=True)
        model = onnx.load(str(path), load_external_data=False)
        if merge_slices(model.graph):  # the KV cache's per-block reads: one Slice each (onnx_passes.py)
            onnx.save_model(model, str(path))
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        release_memory()
    return log.getvalue()


def release_memory() -> None:
    """Hand the heap a trace freed back to the system: tracing a large model leaves freed heap
    in glibc's free lists (Infinity-2B: ~0.33 GiB kept per transformer graph, measured; at that
    rate an export of every policy would pass 1.3x the weights). ``malloc_trim`` returns part of
    it (on a depth-8 model at 2B width: 0.03-0.06 GiB of the 0.04-0.10 GiB each trace kept).
    Elsewhere than glibc: a collection only."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _by_parameter(module: torch.nn.Module, dims: dict[str, dict]) -> dict[str, dict | tuple]:
    """torch.export keys dynamic shapes by the forward's parameters: inputs beyond its named ones
    go to its ``*args`` parameter as one tuple (ToProVAR's rank inputs, one per block; StageVAR's
    projections, one per chunk)."""
    params = inspect.signature(module.forward).parameters.values()
    named = [p.name for p in params if p.kind is not p.VAR_POSITIONAL]
    rest = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
    if rest is None:
        return dims
    names = list(dims)
    return {**{n: dims[n] for n in names[: len(named)]}, rest: tuple(dims[n] for n in names[len(named) :])}


def read_external(model_path: Path, tensor: TensorProto) -> bytes:
    """The bytes of an initializer stored outside the graph file (the exporter's ``.data`` file)."""
    info = {e.key: e.value for e in tensor.external_data}
    with open(model_path.parent / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def _set_shape(value_info: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"{value_info.name}: rank {len(dims)} in the graph, {len(shape)} in the spec")
    for d, n in zip(dims, shape):
        d.Clear()
        d.dim_value = n


def specialize(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """The component graph with every dim fixed to ``spec``'s shapes and its Shape ops folded;
    outputs the spec leaves out are dropped with the nodes and weights only they needed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_name = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    if any(o.name not in by_name for o in m.graph.output):
        _drop_outputs(m.graph, {t.name for t in spec.outputs})
    for vi in (*m.graph.input, *m.graph.output):
        _set_shape(vi, by_name[vi.name].shape)
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    shapes = {vi.name: vi.type.tensor_type.shape for vi in (*m.graph.value_info, *m.graph.input)}
    nodes = []
    for node in m.graph.node:
        shp = shapes.get(node.input[0]) if node.op_type == "Shape" else None
        if shp is not None and all(d.HasField("dim_value") for d in shp.dim):
            full = [d.dim_value for d in shp.dim]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(full))
            value = numpy_helper.from_array(np.array(full[start:end], dtype=np.int64), node.output[0])
            nodes.append(helper.make_node("Constant", [], [node.output[0]], name=node.name, value=value))
        else:
            nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    m.graph.name = spec.name
    return onnx.shape_inference.infer_shapes(m, strict_mode=False)


def _drop_outputs(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Keep only the outputs in ``keep``, then the nodes they depend on and the weights those read."""
    outputs = [o for o in graph.output if o.name in keep]
    del graph.output[:]
    graph.output.extend(outputs)
    needed, nodes = set(keep), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # a subgraph (If/Loop body) may read outer names
                for g in (attr.g, *attr.graphs):
                    needed.update(i for n in g.node for i in n.input)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of a graph's initializers (external ones by their recorded length)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    return total
