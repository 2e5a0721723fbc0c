"""Which tensors a TensorRT context binds, and what a bound tensor must be — no GPU needed.

``enqueueV3`` needs an address for every I/O tensor of the engine, and the engine's I/O is the
component ONNX's, not the static graph's: a FastVAR ``_nodeltas`` graph leaves ``new_deltas`` out,
but the engine built from ``transformer_fastvar.onnx`` still writes it. :func:`plan_bindings`
matches the two: the graph's inputs and outputs must be the engine's (same names, dtypes), every
engine input must be fed, and the outputs the graph leaves out go to scratch memory (one buffer
per engine, shared by its contexts, which run one at a time). The export checks the same match on
the CPU with the component ONNX's I/O (:func:`onnx_io`), so a mismatch never reaches a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from varrt.engines.base import EngineError
from varrt.export.graphs import GraphSpec

#: TensorRT's alignment for tensor addresses (``setTensorAddress``: 256 bytes)
ALIGN = 256


@dataclass(frozen=True)
class IOTensor:
    """One I/O tensor of an engine (or of the ONNX it is built from)."""

    name: str
    is_input: bool
    dtype: str  # varrt's dtype names: "float32", "float16", "bfloat16", "int64", ...


@dataclass(frozen=True)
class BindingPlan:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scratch: tuple[str, ...]  # engine outputs the graph leaves out: bound to scratch memory


def plan_bindings(engine_io: Sequence[IOTensor], graph: GraphSpec, where: str = "the engine") -> BindingPlan:
    """Bindings of ``graph`` on an engine with ``engine_io``; a clear error when they cannot cover it."""
    io = {t.name: t for t in engine_io}
    problems = []
    for spec in graph.inputs:
        t = io.get(spec.name)
        if t is None or not t.is_input:
            problems.append(f"input {spec.name!r} is not an input of {where}")
        elif t.dtype != spec.dtype:
            problems.append(f"input {spec.name!r} is {spec.dtype} in the graph, {t.dtype} in {where}")
    for spec in graph.outputs:
        t = io.get(spec.name)
        if t is None or t.is_input:
            problems.append(f"output {spec.name!r} is not an output of {where}")
        elif t.dtype != spec.dtype:
            problems.append(f"output {spec.name!r} is {spec.dtype} in the graph, {t.dtype} in {where}")
    fed = {s.name for s in graph.inputs}
    problems += [
        f"{where} needs input {t.name!r}, which the graph does not feed"
        for t in engine_io
        if t.is_input and t.name not in fed
    ]
    if problems:
        raise EngineError(f"{graph.name} cannot run on {where}: " + "; ".join(problems) + " (re-export and rebuild)")
    declared = {s.name for s in graph.outputs}
    return BindingPlan(
        tuple(s.name for s in graph.inputs),
        tuple(s.name for s in graph.outputs),
        tuple(t.name for t in engine_io if not t.is_input and t.name not in declared),
    )


def onnx_io(model) -> list[IOTensor]:
    """The I/O of an ONNX model (what TensorRT's parser makes the engine's I/O)."""
    import onnx

    def dtype(vi) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name

    return [IOTensor(i.name, True, dtype(i)) for i in model.graph.input] + [
        IOTensor(o.name, False, dtype(o)) for o in model.graph.output
    ]


def scratch_layout(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Offsets (256-byte aligned) of scratch outputs packed into one buffer, and its size."""
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end)
        end += -(-n // ALIGN) * ALIGN
    return offsets, max(end, ALIGN)


@dataclass(frozen=True)
class Binding:
    """What a bound tensor must be: TensorRT gets an address and nothing else."""

    name: str
    shape: tuple[int, ...]
    dtype: object  # torch.dtype
    device: object = None  # torch.device; None: not checked


def check_binding(t, binding: Binding) -> None:
    """Contiguous, the engine's dtype and shape, on the engine's GPU, 256-byte aligned — else a clear error."""
    problems = []
    if tuple(t.shape) != binding.shape:
        problems.append(f"shape {tuple(t.shape)} (engine: {binding.shape})")
    if t.dtype != binding.dtype:
        problems.append(f"dtype {t.dtype} (engine: {binding.dtype})")
    if binding.device is not None and t.device != binding.device:
        problems.append(f"on {t.device} (engine: {binding.device})")
    if not t.is_contiguous():
        problems.append("not contiguous (TensorRT reads dense row-major memory; strides are not passed)")
    if t.data_ptr() % ALIGN:
        problems.append(f"address not {ALIGN}-byte aligned (offset {t.data_ptr() % ALIGN})")
    if problems:
        raise ValueError(f"tensor {binding.name!r} cannot be bound: " + "; ".join(problems))
