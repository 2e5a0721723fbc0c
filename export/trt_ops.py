"""Is every op of a graph one TensorRT's ONNX parser supports, for the element types it sees?

The support matrix (``data/trt10_onnx_ops.csv``: operator, supported, types) is TensorRT 10's
ONNX parser matrix for opsets 9-20. A graph that fails this check would fail ``varrt build`` on the
GPU, so export checks it on the CPU, before anyone gets there.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import onnx
from onnx import TensorProto

_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
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


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Problems, one line each (op, node, why); empty when TensorRT can parse every node."""
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
    return problems
