"""ToProVAR: budgets from the paper's keep probability, the in-graph selection by the attention
entropy of an early block of the same scale (checked against a by-hand reconstruction), the same
selection on torch and ONNX Runtime, and TensorRT's TopK limit at Infinity's 1M token counts."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import tiny_var
from varrt.engines.compare import random_feeds
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import InfinityTorchEngine, TorchEngine
from varrt.export.artifact import read_manifest
from varrt.export.configs import var_config
from varrt.export.graphs import GraphSpec, TensorSpec
from varrt.export.infinity_graphs import InfinityToProVarShape, infinity_toprovar_spec
from varrt.export.onnx_export import specialize
from varrt.export.trt_ops import unsupported_ops
from varrt.export.var import live_past, lowest_entropy
from varrt.runtime.flops import plan_flops
from varrt.runtime.generate import generate
from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import make_policy

CFG = var_config("var-tiny-d2")


def expected_keep(n: int, si: int, sn: int, score: float, a_min: float = 0.3, a_max: float = 0.6) -> int:
    """N - floor(N p), p = clip(a_min + (a_max - a_min) (s / (SN - 1)) R, 0, 1), at least 1."""
    p = min(1.0, max(0.0, a_min + (a_max - a_min) * si / (sn - 1) * score))
    return max(1, n - math.floor(p * n + 1e-9))


def test_budgets_follow_the_keep_probability_per_block_and_scale():
    cfg = var_config("var-d16")
    sched = cfg.schedule
    scores = [1.0] * 16
    scores[5], scores[9] = 0.0, 3.0  # R = 0: only alpha_min is pruned; R = 3: the clip keeps one token
    spec = "toprovar:cutoff=7,alpha_min=0.2,alpha_max=0.5,entropy_block=2,layer_score=" + "/".join(map(str, scores))
    plan = make_policy(spec, cfg).plans[0]
    assert plan.toprovar_block == 2 and [s.block_tokens for s in plan.scales[:7]] == [None] * 7
    for si in (7, 8, 9):
        n = sched.tokens(si)
        want = [n] * 3 + [expected_keep(n, si, 10, scores[b], 0.2, 0.5) for b in range(3, 16)]
        assert list(plan.scales[si].block_tokens) == want, si
    assert plan.scales[9].block_tokens[9] == 1 and plan.scales[9].block_tokens[5] == 256 - math.floor(0.2 * 256)
    full, topro = plan_flops(cfg, Plan.full(sched)), plan_flops(cfg, plan)
    assert topro[:7] == full[:7] and all(a.total < b.total for a, b in zip(topro[7:], full[7:]))
    shape = plan.step_shape(9, sched, 1, plan.capacity(sched))
    assert shape.name.startswith("transformer_toprovar_e2_r2_n256_k")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("toprovar:layer_score=1/2/3", "one value or one per block"),
        ("toprovar:entropy_block=1", "entropy_block must leave a later block"),
        ("toprovar:cutoff=0", "cut-off D must be a scale in 1..9"),
        ("toprovar:alpha_min=0.7,alpha_max=0.6", "alpha_min <= alpha_max"),
        ("toprovar:skip=1", "has no option"),
    ],
)
def test_bad_knobs_are_refused(spec, message):
    with pytest.raises(PlanError, match=message):
        make_policy(spec, CFG)


def test_a_toprovar_plan_file_is_validated():
    plan = make_policy("toprovar", CFG).plans[0]
    assert Plan.from_dict(plan.to_dict()) == plan
    bad = plan.with_scale(9, block_tokens=(200, 100))
    with pytest.raises(PlanError, match="compute every token"):
        bad.validate(CFG.schedule, 2)
    with pytest.raises(PlanError, match="no toprovar_block"):
        Plan.from_dict({**plan.to_dict(), "toprovar_block": None}).validate(CFG.schedule, 2)


def test_the_step_is_the_papers_selection_done_by_hand():
    """Blocks 0..e run every token; block e's attention entropy ranks them; each later block runs
    its k lowest-entropy tokens (numpy's ranking here), the others pass through; keys and values of
    a block's k tokens fill its first k slots."""
    var = tiny_var(3)
    torch.manual_seed(0)
    cond = var.condition(torch.tensor([3, 1000]))
    kv, _ = var.empty_kv(2, 40)
    kv[..., :6, :].normal_()
    bias = torch.full((3, 40), -torch.inf)
    bias[:, :6] = 0.0
    bias[2, 4] = -torch.inf  # a slot block 2 never computed: the bias is per block
    x, pos = torch.randn(2, 16, 32), torch.arange(5, 21).expand(2, 16)
    keeps = (9, 5)
    with torch.no_grad():
        logits, new_kv = var.step_toprovar(x, pos, cond, kv, bias, [torch.arange(k) for k in keeps], 0)
        _, _, _, entropy = var.step(x, pos, cond, kv, bias[0], probe=True)  # block 0's = the dense step's
        h = var.embed(x, pos, cond.sos)
        h, k0, v0 = var.blocks[0](h, cond.ada[:, 0], None, live_past(kv, 0, bias[0]))
        torch.testing.assert_close(new_kv[:, 0], torch.stack((k0, v0), 1))
        rows = torch.arange(2).unsqueeze(1)
        for block, k in zip((1, 2), keeps):
            idx = torch.from_numpy(np.sort(np.argsort(entropy[:, 0].numpy(), axis=1, kind="stable")[:, :k], axis=1))
            t, kk, vv = var.blocks[block](h[rows, idx], cond.ada[:, block], None, live_past(kv, block, bias[block]))
            h = h.clone()
            h[rows, idx] = t
            torch.testing.assert_close(new_kv[:, block, :, :, :k], torch.stack((kk, vv), 1))
            assert (new_kv[:, block, :, :, k:] == 0).all()
        torch.testing.assert_close(logits, var.logits(h, cond.head_ada))


def kept_by_keys(model, feeds: dict, new_kv: torch.Tensor, keep: int, infinity: bool = False) -> torch.Tensor:
    """Which tokens block 1 computed (entropy block 0), read back from the keys in its first
    ``keep`` slots: each matches exactly one token's key computed densely from block 0's output."""
    cond_ada = feeds["ada"]
    if infinity:
        pos = feeds["pos"]
        h, rope = model.embed(feeds["x"], pos, feeds["sos"]), model.rope(pos)
        past = live_past(feeds["kv"], 0, feeds["kv_bias"][0])
        h, _, _ = model.blocks[0](h, cond_ada[:, 0], rope, past, feeds["ca_kv"][:, 0], feeds["text_bias"])
        dense, _ = model.blocks[1].keys_values(h, cond_ada[:, 1], rope)
    else:
        h = model.embed(feeds["x"], feeds["pos_idx"], feeds["sos"])
        h, _, _ = model.blocks[0](h, cond_ada[:, 0], None, live_past(feeds["kv"], 0, feeds["kv_bias"][0]))
        dense, _ = model.blocks[1].keys_values(h, cond_ada[:, 1])
    slots = new_kv[:, 1, 0, :, :keep].transpose(1, 2).flatten(2)  # (R, k, H d)
    d = torch.cdist(slots, dense.transpose(1, 2).flatten(2), compute_mode="donot_use_mm_for_euclid_dist")  # (R, k, n)
    assert d.min(-1).values.max() < 1e-4  # every slot is one token's key
    return d.argmin(-1)


def check_graphs_on_both_backends(graphs, eager, onnx_engine, model, total_tokens: int, infinity: bool) -> int:
    checked = 0
    for graph in graphs:
        feeds = random_feeds(graph, total_tokens, 1000, seed=checked)
        ref, got = eager.run(graph, feeds), onnx_engine.run(graph, feeds)
        for spec in graph.outputs:
            torch.testing.assert_close(got[spec.name], ref[spec.name], atol=1e-4, rtol=1e-4, msg=graph.name)
        keep = graph.input("keep_rank_1").shape[0]
        with torch.no_grad():
            a = kept_by_keys(model, feeds, ref["new_kv"], keep, infinity)
            b = kept_by_keys(model, feeds, got["new_kv"], keep, infinity)
        assert torch.equal(a, b), graph.name  # the same tokens, in the same slots
        checked += 1
    return checked


def test_in_graph_selection_is_the_same_on_torch_and_ort(policy_artifact, tiny_models):
    graphs = [g for g in read_manifest(policy_artifact).graphs if g.component == "transformer_toprovar"]
    var = tiny_models[0]
    n = check_graphs_on_both_backends(
        graphs, TorchEngine(*tiny_models), OrtEngine(policy_artifact), var, var.cfg.schedule.total_tokens, False
    )
    assert n >= 2  # the two pruned scales (and their CFG-off / group sizes where the policy has them)


def test_in_graph_selection_is_the_same_on_torch_and_ort_for_infinity(infinity_artifact, tiny_infinity_models):
    from helpers import TINY_SCHEDULE

    model, vae, _ = tiny_infinity_models
    graphs = [g for g in read_manifest(infinity_artifact).graphs if g.component == "infinity_transformer_toprovar"]
    assert {tuple(t.shape[0] for t in g.inputs if t.name.startswith("keep_rank")) for g in graphs} == {
        (65, 83, 29),
        (103, 141, 26),
    }
    n = check_graphs_on_both_backends(
        graphs, InfinityTorchEngine(model, vae), OrtEngine(infinity_artifact), model, TINY_SCHEDULE.total_tokens, True
    )
    assert n >= 2


def test_generation_follows_the_plan(tiny_models):
    g = generate(TorchEngine(*tiny_models), [3, 5], seed=0, policy=make_policy("toprovar", CFG))
    assert all(i is not None and (i >= 0).all() for i in g.indices)


# ---------------------------------------------------------------------------- TensorRT's TopK limit
def test_the_graph_passes_the_tensorrt_op_check_at_infinity_1m_scales(infinity_artifact, tiny_infinity_models):
    """Infinity's 1M templates reach 4096 (64x64) and 4107 tokens: the ToProVAR graph, fixed at
    those sizes with budgets above TensorRT's TopK limit (k <= 3840), still passes the op check."""
    cfg = tiny_infinity_models[0].cfg
    component = onnx.load(str(infinity_artifact / "infinity_transformer_toprovar.onnx"), load_external_data=False)
    for n, keeps in ((4096, (3900, 2048, 100)), (4107, (4107, 3841, 1))):
        spec = infinity_toprovar_spec(cfg, InfinityToProVarShape(2, n, keeps, 9000, 0, past=4000, text=16))
        fixed = specialize(component, spec)
        assert sum(node.op_type == "TopK" for node in fixed.graph.node) == 3
        assert unsupported_ops(fixed) == [], (n, keeps)


class Selection(torch.nn.Module):
    def forward(self, entropy, keep_rank):
        return lowest_entropy(entropy, keep_rank)


@pytest.mark.parametrize(("n", "k"), [(4096, 3900), (4107, 4107), (4107, 2000), (144, 65)])
def test_the_selection_alone_is_the_same_on_ort_at_large_scales(tmp_path, n, k):
    from torch.export import Dim

    path = tmp_path / "select.onnx"
    dims = {"entropy": {0: Dim("rows", max=64), 1: Dim("tokens", max=8192)}, "keep_rank": {0: Dim("keep", max=8192)}}
    torch.onnx.export(
        Selection(), (torch.rand(3, 7), torch.arange(5)), str(path), input_names=["entropy", "keep_rank"],
        output_names=["idx"], opset_version=20, dynamo=True, dynamic_shapes=dims,
    )  # fmt: skip
    inputs = (TensorSpec("entropy", (2, n), "float32"), TensorSpec("keep_rank", (k,), "int64"))
    fixed = specialize(
        onnx.load(str(path)), GraphSpec("select", "select", inputs, (TensorSpec("idx", (2, k), "int64"),))
    )
    assert unsupported_ops(fixed) == []
    entropy = torch.rand(2, n, generator=torch.Generator().manual_seed(n + k))
    sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"entropy": entropy.numpy(), "keep_rank": np.arange(k)})[0])
    expected = np.sort(np.argsort(entropy.numpy(), axis=1, kind="stable")[:, :k], axis=1)
    assert torch.equal(got, torch.from_numpy(expected)) and torch.equal(got, Selection()(entropy, torch.arange(k)))
