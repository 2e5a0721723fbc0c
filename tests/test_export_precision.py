"""fp16 / bf16 exports: half-precision weights, matmuls and KV; norms, softmax and logits in fp32."""

from __future__ import annotations

import onnx
import pytest
import torch

from helpers import tiny_source, tiny_var, tiny_vqvae
from varrt.export.artifact import read_manifest
from varrt.export.exporter import ExportConfig
from varrt.export.trt_ops import unsupported_ops
from varrt.runtime.artifacts import ExportRequest, ensure_artifact

ONNX_TYPES = {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_precision_export(tmp_path, precision):
    var, vq = tiny_var(2, patch_nums=(1, 2, 3, 4)), tiny_vqvae(patch_nums=(1, 2, 3, 4))
    request = ExportRequest(tiny_source(patch_nums=(1, 2, 3, 4)), ("full",), 1, ExportConfig(precision=precision))
    out = ensure_artifact(request, lambda: (var, vq), out=tmp_path / precision)
    m = read_manifest(out)
    assert m.precision == precision and "skipped" in m.validation["parity"]
    assert var.mat_dtype == torch.float32, "exporting must not convert the caller's model"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "transformer.onnx"), load_external_data=False))
    io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io["kv"] == io["new_kv"] == ONNX_TYPES[precision]
    assert io["logits"] == io["x"] == onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update(io)
    # Attention's softmax is written out (ReduceMax, Exp, ReduceSum) because the past's and the new keys'
    # parts are added, not concatenated (graph contract 4+): each of its steps must stay fp32.
    softmax_ops = ("LayerNormalization", "Softmax", "ReduceMax", "Exp", "ReduceSum")
    kinds: dict[str, set[int | None]] = {}
    for n in model.graph.node:
        if n.op_type in softmax_ops:
            kinds.setdefault(n.op_type, set()).add(types.get(n.input[0]))
    assert {"LayerNormalization", "Exp"} <= set(kinds), kinds
    assert all(t == {onnx.TensorProto.FLOAT} for t in kinds.values()), kinds
    weights = [t.data_type for t in model.graph.initializer if len(t.dims) == 2 and min(t.dims) > 32]
    assert weights and all(t == ONNX_TYPES[precision] for t in weights)
    for f in out.glob("*.onnx"):
        assert unsupported_ops(onnx.load(str(f), load_external_data=False)) == [], f.name
