"""Is every op of a graph one TensorRT's ONNX parser supports, for the element types it sees?

The support matrix (``data/trt10_onnx_ops.csv``: operator, supported, types) is TensorRT 10's
ONNX parser matrix for opsets 9-20. A graph that fails this check would fail ``varrt build`` on the
GPU, so export checks it on the CPU, before anyone gets there. Beyond the matrix, the parser's
documented per-op restrictions that varrt's graphs can meet are checked too: TopK needs
``sorted = 1`` and ``K <= 3840`` (onnx-tensorrt 10.x operators.md; TensorRT's TopK operator page:
"k <= 3840"), which a static graph fixes through its shapes. Explicit quantization (TensorRT's
"Working with Quantized Types"): QuantizeLinear / DequantizeLinear to INT8 or FP8 E4M3 only, with
zero points that are constant zeros (symmetric quantization).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: the largest k TensorRT's TopK layer takes (its operator reference: "k <= 3840")
TOPK_MAX = 3840

_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
}
#: ops whose first input is a shape; their listed types are the output's
_OUTPUT_TYPED = {"ConstantOfShape"}


@dataclass(frozen=True)
class OpSupport:
    supported: bool
    types: frozenset[str]


@cache
def support_matrix() -> dict[str, OpSupport]:
    text = resources.files("varrt.export").joinpath("data/trt10_onnx_ops.csv").read_text()
    out = {}
    for row in csv.reader(line for line in text.splitlines() if line and not line.startswith("#")):
        op, ok, types = row[0].strip(), row[1].strip() == "Y", row[2] if len(row) > 2 else ""
        out[op] = OpSupport(ok, frozenset(t.replace("INF64", "INT64") for t in types.split()))
    return out


def unsupported_ops(model: onnx.ModelProto, base_dir: str | None = None) -> list[str]:
    """Problems, one line each (op, node, why); empty when TensorRT can parse every node.
    ``base_dir``: where the model's external data lies (to read Q/DQ zero points stored there)."""
    matrix = support_matrix()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    types.update({init.name: init.data_type for init in model.graph.initializer})
    problems = []
    for node in inferred.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} ({node.name}): custom domain {node.domain!r} is not an ONNX op")
            continue
        sup = matrix.get(node.op_type)
        if sup is None or not sup.supported:
            problems.append(f"{node.op_type} ({node.name}): not supported by TensorRT's ONNX parser")
            continue
        tensor = node.output[0] if node.op_type in _OUTPUT_TYPED else (node.input[0] if node.input else "")
        elem = types.get(tensor)
        name = _TYPE_NAMES.get(elem) if elem else None
        if sup.types and name and name not in sup.types:
            problems.append(f"{node.op_type} ({node.name}): {name} input, TensorRT supports {sorted(sup.types)}")
        if node.op_type == "TopK":
            problems += _topk_problems(inferred, node)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += _qdq_problems(inferred, node, types, base_dir)
    return problems


def _qdq_problems(
    model: onnx.ModelProto, node: onnx.NodeProto, types: dict[str, int], base_dir: str | None
) -> list[str]:
    """TensorRT's Q/DQ: an INT8 / FP8 quantized side and a zero point that is constant 0."""
    quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
    if len(node.input) > 2 and node.input[2]:
        zp = _initializer(model, node.input[2], base_dir)
        if zp is None:
            zp = constant_value(model, node.input[2])
        quantized_type = types.get(node.input[2])
        if zp is None:
            return [f"{node.op_type} ({node.name}): zero point {node.input[2]} is not a constant"]
        if np.any(np.asarray(zp, dtype=np.float64) != 0):
            return [f"{node.op_type} ({node.name}): zero point is not 0, TensorRT quantizes symmetrically"]
    else:
        quantized_type = types.get(quantized, TensorProto.UINT8 if node.op_type == "QuantizeLinear" else None)
    name = _TYPE_NAMES.get(quantized_type)
    if name not in ("INT8", "FP8"):
        return [f"{node.op_type} ({node.name}): {name or quantized_type} quantized tensor, TensorRT takes INT8 or FP8"]
    return []


def _topk_problems(model: onnx.ModelProto, node: onnx.NodeProto) -> list[str]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    problems = []
    if attrs.get("sorted", 1) != 1:
        problems.append(f"TopK ({node.name}): sorted=0, TensorRT's parser needs sorted=1")
    k = constant_value(model, node.input[1]) if len(node.input) > 1 else attrs.get("k")
    if k is not None and int(np.asarray(k).reshape(-1)[0]) > TOPK_MAX:
        problems.append(
            f"TopK ({node.name}): k = {int(np.asarray(k).reshape(-1)[0])}, TensorRT's TopK takes k <= {TOPK_MAX}"
        )
    return problems


def _initializer(model: onnx.ModelProto, name: str, base_dir: str | None) -> np.ndarray | None:
    """An initializer's value, read from external data when it is stored there."""
    from onnx.external_data_helper import load_external_data_for_tensor

    t = next((t for t in model.graph.initializer if t.name == name), None)
    if t is None:
        return None
    if t.data_location == TensorProto.EXTERNAL:
        if base_dir is None:
            return None
        t = TensorProto.FromString(t.SerializeToString())
        load_external_data_for_tensor(t, base_dir)
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
    return numpy_helper.to_array(t)


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of tensor ``name`` when it depends on constants only (a static graph's folded
    shapes), evaluated with ONNX's reference runtime; None when a graph input feeds it."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input} - set(inits)
    chosen, todo, seen = set(), [name], set()
    while todo:
        t = todo.pop()
        if t in seen or t in inits or not t:
            continue
        seen.add(t)
        if t in inputs or t not in producer:
            return None
        n = producer[t]
        if n.op_type == "Shape":  # of a tensor whose shape is not static: the value is unknown
            return None
        chosen.add(n.output[0])
        todo.extend(n.input)
    if not chosen:
        return numpy_helper.to_array(inits[name]) if name in inits else None
    order = [n for n in graph.node if n.output and n.output[0] in chosen]  # topological, as in the graph
    used = {i for n in order for i in n.input} & set(inits)
    if any(inits[i].data_location == TensorProto.EXTERNAL for i in used):
        return None  # shapes are never computed from weights
    sub = helper.make_graph(
        order,
        "constant",
        [],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None)],
        [inits[i] for i in used],
    )
    from onnx.reference import ReferenceEvaluator

    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})[0])
