"""Rewrites of exported ONNX graphs that the exporter does not do itself.

:func:`merge_slices` fuses chains of ``Slice`` nodes into one. The dynamo exporter writes a
multi-axis slice such as ``kv[:, i:i+1, 0:1, :, :P]`` as one ``Slice`` per axis (and shares the
block's ``kv[:, i:i+1]`` between its keys and values); ONNX Runtime materialises every
intermediate, so each block's read of the KV cache copied the block's whole capacity before
cutting it to the live prefix. One ``Slice`` over all the axes copies the P live slots once
(TensorRT fuses either form).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    inline = [t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    values = {t.name: numpy_helper.to_array(t) for t in inline}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def _axes(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> set[int] | None:
    """The constant, non-negative axes a Slice cuts (None: not known statically)."""
    if node.op_type != "Slice" or len(node.input) < 4 or node.input[3] not in consts:
        return None
    axes = consts[node.input[3]].reshape(-1)
    return None if (axes < 0).any() else set(axes.tolist())


def _fused(inner: onnx.NodeProto, outer: onnx.NodeProto, consts: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """Nodes computing ``outer(inner(x))`` as one Slice of x: starts/ends/axes/steps concatenated,
    as constants where both parts are (the axes always are), else by a Concat node."""
    tag = f"{outer.name or outer.output[0]}_merged"
    nodes, args = [], []
    for k, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")):
        parts = []
        for node in (inner, outer):
            if len(node.input) > k and node.input[k]:
                parts.append(consts.get(node.input[k], node.input[k]))
            else:  # steps left out: 1 on every axis
                parts.append(np.ones(consts[node.input[3]].size, np.int64))
        name = f"{tag}_{what}"
        if all(isinstance(p, np.ndarray) for p in parts):
            value = numpy_helper.from_array(np.concatenate([p.reshape(-1) for p in parts]).astype(np.int64))
            nodes.append(helper.make_node("Constant", [], [name], value=value))
        else:
            names = []
            for i, p in enumerate(parts):
                if isinstance(p, np.ndarray):
                    names.append(f"{name}_{i}")
                    nodes.append(helper.make_node("Constant", [], [names[-1]], value=numpy_helper.from_array(p)))
                else:
                    names.append(p)
            nodes.append(helper.make_node("Concat", names, [name], axis=0))
        args.append(name)
    return [*nodes, helper.make_node("Slice", [inner.input[0], *args], list(outer.output), name=tag)]


def merge_slices(graph: onnx.GraphProto) -> int:
    """Fuse ``Slice(Slice(x, ...), ...)`` into one ``Slice`` of x wherever every consumer of the
    inner result is a Slice that cuts other (constant, non-negative) axes; the inner Slice goes.
    Returns the number of inner Slices removed; ``graph`` is changed in place."""
    merged = 0
    while True:
        consts = _constants(graph)
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        outputs = {o.name for o in graph.output}
        target = None
        for inner in graph.node:
            axes = _axes(inner, consts)
            users = consumers.get(inner.output[0], []) if axes is not None else []
            if not users or inner.output[0] in outputs:
                continue
            outer_axes = [_axes(u, consts) for u in users]
            if all(a is not None and not a & axes and u.input[0] == inner.output[0] for u, a in zip(users, outer_axes)):
                target = inner, users
                break
        if target is None:
            return merged
        inner, users = target
        replaced = {id(u): _fused(inner, u, consts) for u in users}
        nodes = []
        for node in graph.node:
            if node is not inner:
                nodes.extend(replaced.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(nodes)
        merged += 1
