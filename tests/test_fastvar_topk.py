"""FastVAR's in-graph token selection within TensorRT's TopK limit (k <= 3840), and the op check
that rejects a TopK beyond it."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from varrt.export.graphs import GraphSpec, TensorSpec
from varrt.export.onnx_export import specialize
from varrt.export.trt_ops import TOPK_MAX, unsupported_ops
from varrt.export.var import largest_k, pivotal_tokens
from varrt.runtime.selectors import distance_to_mean, top_tokens


def spread_tokens(rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """Tokens whose distances to the mean are far apart (no near-ties at the keep boundary)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, 4, generator=g) * (1 + torch.randperm(n, generator=g)).view(1, n, 1).float()


@pytest.mark.parametrize(("n", "k"), [(7, 1), (7, 3), (7, 4), (7, 7), (100, 50), (100, 51), (4107, 4107), (4107, 4000)])
def test_largest_k_is_the_k_highest_in_index_order(n, k):
    score = distance_to_mean(spread_tokens(3, n))
    assert torch.equal(largest_k(score, k), top_tokens(score, k))


class Pivotal(torch.nn.Module):
    def __init__(self, select=pivotal_tokens) -> None:
        super().__init__()
        self.select = select

    def forward(self, h, keep_rank):
        return self.select(h, keep_rank)


def sort_all(h: torch.Tensor, keep_rank: torch.Tensor) -> torch.Tensor:
    """The graph-version-3 form: a full sort (exported as TopK with k = N), then the first k."""
    score = (h - h.mean(dim=1, keepdim=True)).square().sum(-1)
    return score.argsort(dim=1, descending=True).index_select(1, keep_rank)


def export_selection(module: torch.nn.Module, path) -> onnx.ModelProto:
    from torch.export import Dim

    dims = {"h": {0: Dim("rows", min=1, max=64), 1: Dim("tokens", min=1, max=8192)}, "keep_rank": {0: Dim("keep")}}
    example = (torch.randn(3, 7, 4), torch.arange(5))
    torch.onnx.export(
        module.eval(), example, str(path), input_names=["h", "keep_rank"], output_names=["idx"], opset_version=20,
        dynamo=True, dynamic_shapes=dims,
    )  # fmt: skip
    return onnx.load(str(path))


def static(model: onnx.ModelProto, rows: int, n: int, k: int) -> onnx.ModelProto:
    spec = GraphSpec(
        f"select_r{rows}_n{n}_k{k}",
        "select",
        (TensorSpec("h", (rows, n, 4), "float32"), TensorSpec("keep_rank", (k,), "int64")),
        (TensorSpec("idx", (rows, k), "int64"),),
    )
    return specialize(model, spec)


def test_pivotal_selection_stays_within_tensorrt_topk_at_infinity_1m(tmp_path):
    """Infinity's largest 1M scale has 4107 tokens (h/w 3 and 1/3); a reference scale keeps them
    all. The exported selection passes the op check at every k and matches eager torch on ORT."""
    model = export_selection(Pivotal(), tmp_path / "select.onnx")
    for n, k in ((4107, 4107), (4107, 3900), (4107, 1600), (9, 5)):
        fixed = static(model, 2, n, k)
        assert unsupported_ops(fixed) == [], (n, k)
        h, rank = spread_tokens(2, n, seed=k), torch.arange(k)
        sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"h": h.numpy(), "keep_rank": rank.numpy()})[0])
        assert torch.equal(got, pivotal_tokens(h, rank)), (n, k)


def test_op_check_rejects_a_full_sort_beyond_the_topk_limit(tmp_path):
    model = export_selection(Pivotal(sort_all), tmp_path / "sort.onnx")
    assert unsupported_ops(static(model, 2, 3840, 100)) == []
    problems = unsupported_ops(static(model, 2, 4107, 100))
    assert len(problems) == 1 and f"k = 4107, TensorRT's TopK takes k <= {TOPK_MAX}" in problems[0]


def test_op_check_reads_topk_k_and_sorted():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5000])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("v", "w")]
    idx = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("i", "j")]
    ks = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("k_big", 4000), ("k_small", 8))]
    nodes = [
        helper.make_node("TopK", ["x", "k_big"], ["v", "i"], name="big"),
        helper.make_node("TopK", ["x", "k_small"], ["w", "j"], name="unsorted", sorted=0),
    ]
    graph = helper.make_graph(nodes, "g", [x], [outs[0], idx[0], outs[1], idx[1]], ks)
    problems = unsupported_ops(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    assert problems == [
        f"TopK (big): k = 4000, TensorRT's TopK takes k <= {TOPK_MAX}",
        "TopK (unsorted): sorted=0, TensorRT's parser needs sorted=1",
    ]
