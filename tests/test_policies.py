"""Plans and policies: validation, selectors, the CFG-off path, and identical decisions on every backend."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from helpers import tiny_var, tiny_vqvae
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.configs import var_config
from varrt.export.graphs import transformer_spec
from varrt.export.trt_ops import unsupported_ops
from varrt.export.var import Conditioning
from varrt.runtime.flops import plan_flops
from varrt.runtime.generate import generate
from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import make_policy
from varrt.runtime.policies.skipvar import SkipVarPolicy, published_models
from varrt.runtime.sampling import SamplingConfig
from varrt.runtime.selectors import (
    distance_to_mean,
    high_frequency_difference,
    high_frequency_ratio,
    keep_count,
    nearest_fill,
    top_tokens,
)

SCHED = var_config("var-tiny-d2").schedule


# ------------------------------------------------------------------------------------------ plans
def full() -> Plan:
    return Plan.full(SCHED)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (full().with_scale(9, budget=300), "budget 300 must be between 1 and 256"),
        (full().with_scale(8, cfg="cond").with_scale(9, cfg="both"), "switched back on after scale 8"),
        (full().with_scale(9, budget=100), "needs a restoration rule"),
        (full().with_scale(9, budget=100, restore="magic"), "unknown restoration rule 'magic'"),
        (full().with_scale(9, budget=100, restore="fastvar"), "goes with a FastVAR plan"),
        (full().with_scale(0, run=False), "scale 0 must run"),
        (full().with_scale(3, cfg="maybe"), "cfg 'maybe'"),
        (full().with_scale(3, layers=(1, 0)), "layers must be increasing"),
        (full().with_scale(4, run=False).with_scale(5, budget=10, restore="cache"), "previous scale to have run"),
        (Plan("short", (ScalePlan(),) * 3), "has 3 scales"),
    ],
)
def test_impossible_plans_are_refused(plan, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan.validate(SCHED, depth=2)


def test_plan_files_roundtrip_and_errors(tmp_path):
    plan = full().with_scale(9, budget=100, restore="nearest").with_scale(8, cfg="cond").with_scale(9, cfg="cond")
    p = tmp_path / "p.json"
    p.write_text(json.dumps(plan.to_dict()))
    assert Plan.load(p) == plan
    toml = tmp_path / "p.toml"
    toml.write_text('name = "t"\n' + "[[scales]]\n" * 9 + '[[scales]]\nbudget = 200\nrestore = "cache"\n')
    assert Plan.load(toml).scales[9].budget == 200
    p.write_text('{"name": "x", "scales": [{"budjet": 3}]}')
    with pytest.raises(PlanError, match=r"unknown fields \['budjet'\]"):
        Plan.load(p)
    p.write_text("{nope")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(p)


def test_unknown_policy_and_option():
    cfg = var_config("var-tiny-d2")
    with pytest.raises(PlanError, match="unknown policy 'fastvr'"):
        make_policy("fastvr", cfg)
    with pytest.raises(PlanError, match=r"has no option\(s\) \['ratio'\]"):
        make_policy("fastvar:ratio=0.5", cfg)
    with pytest.raises(PlanError, match="no published model for threshold=0.9"):
        make_policy("skipvar:threshold=0.9", cfg)


def test_fastvar_plan_uses_the_published_shape_of_settings():
    plan = make_policy("fastvar", var_config("var-d16")).plans[0]
    assert [s.budget for s in plan.scales[-3:]] == [None, 85, 64]
    assert plan.fastvar_blocks == (2, 14) and plan.fastvar_reference == 7
    sched = var_config("var-d16").schedule
    shapes = [plan.step_shape(si, sched, 1, 680) for si in (6, 7, 8, 9)]
    assert [type(s).__name__ for s in shapes] == ["StepShape", "FastVarShape", "FastVarShape", "FastVarShape"]
    assert [s.returns_deltas for s in shapes[1:]] == [True, False, False]  # only the reference hands deltas on
    assert keep_count(1024, 0.6) == 615 and keep_count(1600, 0.5) == 800  # Infinity-2B's published counts


def test_flops_of_the_full_plan_match_var_spec():
    """var-spec.md §6, d16, no CFG: linear / attention / head per scale (GFLOPs)."""
    cfg = var_config("var-d16")
    flops = plan_flops(cfg, Plan.full(cfg.schedule), batch=1)
    half = [(f.linear / 2e9, f.attention / 2e9, f.head / 2e9) for f in flops]  # both CFG rows counted
    assert half[9] == pytest.approx((103.079, 11.409, 2.147), abs=1e-3)
    assert half[6] == pytest.approx((25.770, 0.650, 0.537), abs=1e-3)


# ------------------------------------------------------------------------------------------ selectors
def test_pivotal_tokens_are_the_farthest_from_the_mean():
    from varrt.export.var import pivotal_tokens

    h = torch.zeros(1, 6, 2)
    h[0, :, 0] = torch.tensor([0.0, 5.0, 0.1, -4.0, 0.2, 1.0])  # mean 0.55: distances 0.3, 19.8, 0.2, 20.7, 0.1, 0.2
    kept = pivotal_tokens(h, torch.arange(2))
    assert sorted(kept[0].tolist()) == [1, 3]
    assert top_tokens(distance_to_mean(h), 2).tolist() == [[1, 3]]


def test_nearest_fill_copies_the_nearest_kept_feature():
    kept = torch.tensor([[0, 15]])  # corners of a 4x4 grid
    fill = nearest_fill(kept, 4).view(4, 4)
    assert fill[0, 0] == 0 and fill[3, 3] == 1 and fill[0, 1] == 0 and fill[2, 3] == 1
    assert fill[0, 3] == 0  # a tie goes to the earlier kept token


def test_frequency_features():
    flat = torch.zeros(1, 3, 32, 32)
    assert high_frequency_ratio(flat + 0.5).item() == pytest.approx(0.0, abs=1e-6)
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2).float().expand(1, 3, 32, 32)
    assert high_frequency_ratio(checker * 2 - 1).item() > 0.99
    assert high_frequency_difference(checker, checker).item() == 0.0


def expected_strategies(models: dict, x: np.ndarray) -> np.ndarray:
    """SkipVAR's two logistic regressions computed independently, in numpy: the strategy index
    (0 base, 1-3 skip k, 4-6 uncond k)."""

    def argmax(m):
        z = (x - np.array(m["mean"])) / np.array(m["scale"])
        return np.array(m["classes"])[np.argmax(z @ np.array(m["coef"]).T + np.array(m["intercept"]), axis=1)]

    skip, uncond = argmax(models["skip"]), argmax(models["uncond"])
    return np.where(skip > 0, skip, np.where(uncond > 0, uncond + 3, 0))


@pytest.mark.parametrize("threshold", ["0.84", "0.86", "0.88"])
def test_skipvar_decision_is_the_logistic_regression_argmax(threshold):
    models = published_models()["models"][threshold]
    policy = SkipVarPolicy(var_config("var-tiny-d2"), models)
    grid = torch.tensor([[d, r] for d in (0.03, 0.09, 0.15, 0.22) for r in (0.38, 0.44, 0.49, 0.54, 0.60)])

    assert policy.decide(grid).tolist() == expected_strategies(models, grid.numpy()).tolist()
    if threshold == "0.84":  # the published decision map (acceleration-methods.md §2): row diff 0.09
        names = [policy.plans[i].name.removeprefix("skipvar-") for i in policy.decide(grid)[5:10]]
        assert names == ["skip3", "skip3", "skip2", "skip1", "uncond3"]


def test_the_demo_models_own_skipvar_refit_is_named_demo_and_was_fitted_on_it():
    """``skipvar:model=demo`` loads the selector tools/fit_skipvar.py fitted on the bundled model
    (the published coefficients are Infinity-2B's); its decisions are its own regressions'."""
    from varrt.runtime.demo import demo_model
    from varrt.runtime.policies.skipvar import DEMO_REFIT

    demo = demo_model()
    refit = json.loads(DEMO_REFIT.read_text())
    policy = make_policy("skipvar:model=demo", var_config("var-tiny-d2"))
    assert policy.models["skip"] == refit["skip"] and policy.models["uncond"] == refit["uncond"]
    assert refit["sampling"]["cfg"] == demo.sampling["cfg"] and refit["fitted_with"]["seeds"] >= 1
    assert refit["fitted_with"]["classes"] == list(range(len(demo.classes)))
    assert refit["samples"] == refit["fitted_with"]["seeds"] * len(demo.classes)
    features = torch.tensor([[d, r] for d in (0.0, 0.1, 0.3) for r in (0.3, 0.5, 0.7)])
    assert policy.decide(features).tolist() == expected_strategies(refit, features.numpy()).tolist()


# ------------------------------------------------------------------------------------------ runtime paths
class SpyEngine:
    """Records what the runtime feeds (addresses and shapes); runs the torch engine."""

    def __init__(self, inner: TorchEngine) -> None:
        self.inner, self.calls = inner, []
        for k in ("backend", "var_config", "vqvae_config", "precision", "quantizer", "device", "kv_capacity"):
            setattr(self, k, getattr(inner, k))

    def has_graph(self, graph):
        return self.inner.has_graph(graph)

    def run(self, graph, feeds):
        self.calls.append((graph, {k: (v.data_ptr(), tuple(v.shape), v.is_contiguous()) for k, v in feeds.items()}))
        return self.inner.run(graph, feeds)


def test_cfg_off_reads_the_conditional_half_without_a_copy(plan_file, tiny_models):
    spy = SpyEngine(TorchEngine(*tiny_models))
    generate(spy, [1, 2], seed=0, policy=make_policy(str(plan_file), spy.var_config))
    steps = [feeds for graph, feeds in spy.calls if graph.component == "transformer"]
    base_ptr, base_shape, _ = steps[0]["kv"]
    assert base_shape[0] == 4  # 2 samples x (cond, uncond)
    for si in (7, 8, 9):  # conditional only: half the rows, same buffer, same address
        ptr, shape, contiguous = steps[si]["kv"]
        assert shape[0] == 2 and ptr == base_ptr and contiguous
    assert steps[8]["x"][1][1] == 85 and steps[9]["x"][1][1] == 128  # the budgets are what the engine computes


def test_the_unconditional_branch_reads_the_second_half_of_the_cache_and_the_null_class(tiny_models):
    """StageVAR's cfg-0 scales: rows B..2B-1 of the cache (a contiguous view at the same buffer), the
    null class's conditioning, and its logits sampled as they are."""

    class FeedSpy(SpyEngine):
        def run(self, graph, feeds):
            self.calls.append((graph, dict(feeds)))
            return self.inner.run(graph, feeds)

    var = tiny_models[0]
    for branch, labels in (("uncond", [var.cfg.null_class] * 2), ("cond", [1, 2])):
        spy = FeedSpy(TorchEngine(*tiny_models))
        generate(spy, [1, 2], seed=0, policy=make_policy(f"stagevar:branch={branch}", spy.var_config))
        steps = [(g, f) for g, f in spy.calls if g.component.startswith("transformer")]
        (_, first), (late_graph, late) = steps[0], steps[-1]
        assert late_graph.component == "transformer_stagevar" and late["kv"].shape[0] == 2
        half = first["kv"][2:] if branch == "uncond" else first["kv"][:2]
        assert late["kv"].is_contiguous() and late["kv"].data_ptr() == half.data_ptr()
        branch_cond = var.condition(torch.tensor(labels))
        torch.testing.assert_close(late["ada"], branch_cond.ada)
        torch.testing.assert_close(late["head_ada"], branch_cond.head_ada)


def test_budget_plan_keeps_the_map_dense(plan_file, tiny_models):
    g = generate(TorchEngine(*tiny_models), [1, 2], seed=0, policy=make_policy(str(plan_file), tiny_models[0].cfg))
    assert all(i is not None and (i >= 0).all() for i in g.indices)


def test_fastvar_step_without_pruning_is_the_dense_step():
    var = tiny_var(2)
    cond = var.condition(torch.tensor([3, 1000]))
    kv, bias = var.empty_kv(2, 40)
    kv[..., :5, :].normal_()
    bias[:5] = 0
    x, pos = torch.randn(2, 9, 32), torch.arange(5, 14).expand(2, 9)
    dense = var.step(x, pos, cond, kv, bias)
    fast = var.step_fastvar(
        x, pos, Conditioning(*cond), kv, bias.expand(2, -1), torch.arange(9), torch.zeros(2, 2, 2, 9, 128), range(0, 2)
    )
    torch.testing.assert_close(fast[0], dense[0], rtol=1e-5, atol=1e-5)
    # the keys/values are the same set in another slot order (pivotal rank instead of position),
    # which attention does not see: compare them sorted along the slot axis
    torch.testing.assert_close(fast[1].sort(dim=4).values, dense[1].sort(dim=4).values, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ backends
@pytest.mark.parametrize(
    "spec",
    [
        "full",
        "fastvar",
        "skipvar",
        "plan-file",
        "layer-plan-file",
        "ld-pruning",
        "stepvar",
        "toprovar",
        "stagevar:branch=uncond",
        "stagevar:branch=cond",
        "stagevar:skip=1,lowrank=7",
        "skipvar+stepvar",
    ],
)
def test_policies_decide_and_sample_the_same_on_torch_and_ort(
    spec, policy_artifact, tiny_models, plan_file, layer_plan_file
):
    spec = {"plan-file": str(plan_file), "layer-plan-file": str(layer_plan_file)}.get(spec, spec)
    policy = make_policy(spec, tiny_models[0].cfg)
    sampling = SamplingConfig(cfg=4, top_k=900, top_p=0.95)
    ort_engine = OrtEngine(policy_artifact)
    for seed in (0, 1):
        ref = generate(
            TorchEngine(*tiny_models),
            [7, 300, 11],
            seed=seed,
            sampling=sampling,
            policy=policy,
            capacity=ort_engine.kv_capacity,
        )
        got = generate(ort_engine, [7, 300, 11], seed=seed, sampling=sampling, policy=policy)
        assert ref.plans == got.plans and ref.decisions == got.decisions
        for si, (a, b) in enumerate(zip(ref.indices, got.indices)):
            assert (a is None and b is None) or torch.equal(a, b), f"{spec}, seed {seed}, scale {si}"


def test_bucketed_groups_sample_the_same_tokens(policy_artifact, tiny_models):
    """SkipVAR splits a batch of 3 into 2 + 1, and the export holds the group sizes 1 and 3 only:
    ONNX Runtime's symbolic sessions run the pair 2 wide anyway (OrtEngine.has_graph), or padded to
    3 when asked (a copy of its last sample, whose results are dropped: TensorRT's way, which runs
    only the exported shapes); torch runs it exactly or padded. All four draw the same tokens."""
    cfg = tiny_models[0].cfg
    policy = make_policy("skipvar", cfg)
    policy.decide = lambda features: torch.tensor([4, 0, 4])  # samples 0 and 2: uncond1; sample 1: base
    ort_engine = OrtEngine(policy_artifact)
    after = policy.plans[4].step_shape(policy.split_from, cfg.schedule, 2, ort_engine.kv_capacity)
    pair = transformer_spec(cfg, after)
    assert pair.name not in {g.name for g in ort_engine.manifest.graphs}  # no exported shape for a group of 2
    assert ort_engine.has_graph(pair)  # but the session of its component runs it
    sampling = SamplingConfig(cfg=4, top_k=900, top_p=0.95)
    torch_engine = SpyEngine(TorchEngine(*tiny_models))
    run = {"sampling": sampling, "policy": policy, "seed": 0}
    runs = {
        "torch": generate(torch_engine, [7, 300, 11], capacity=680, **run),
        "ort": generate(ort_engine, [7, 300, 11], **run),
        "ort padded": generate(ort_engine, [7, 300, 11], pad_groups=True, **run),
    }
    exact = [g.name for g, _ in torch_engine.calls]
    torch_engine.calls.clear()
    runs["torch padded"] = generate(torch_engine, [7, 300, 11], capacity=680, pad_groups=True, **run)
    padded = [g.name for g, _ in torch_engine.calls]
    assert pair.name in exact and pair.name not in padded
    assert len(exact) == len(padded) and exact != padded  # the same calls, the pair's at 3 wide
    widths = {name: {w for scale in got.groups for _, n, w in scale if n == 2} for name, got in runs.items()}
    assert widths == {"torch": {2}, "ort": {2}, "ort padded": {3}, "torch padded": {3}}, widths
    ref = runs["torch"]
    assert ref.plans == ["skipvar-uncond1", "skipvar-base", "skipvar-uncond1"]
    for name, got in runs.items():
        assert got.plans == ref.plans and got.decisions == ref.decisions, name
        for si, (a, b) in enumerate(zip(ref.indices, got.indices)):
            assert torch.equal(a, b), f"{name}, scale {si}"
        assert (got.images - ref.images).abs().max() <= 1e-3, name


def test_every_policy_graph_passes_the_tensorrt_op_check(policy_artifact):
    """Every component graph (the static shapes are specialisations of them, checked at export)."""
    from varrt.export.artifact import read_manifest

    files = list(policy_artifact.glob("*.onnx"))
    assert any("fastvar" in f.name for f in files)
    assert any("_s5" in g.name for g in read_manifest(policy_artifact).graphs)  # SkipVAR's small decode
    for f in files:
        assert unsupported_ops(onnx.load(str(f), load_external_data=False)) == [], f.name


def test_tiny_vqvae_is_used():
    assert tiny_vqvae().cfg.ch == 32


@pytest.mark.slow
def test_fastvar_parity_feeds_rank_tokens_far_apart():
    """The export's parity check must compare arithmetic, not near-tie coin flips of the ranking: on
    var-d16 (random weights), plain random tokens changed the outputs by O(1) under a 1e-6 nudge."""
    from varrt.engines.compare import random_feeds, slot_order_free
    from varrt.export.checkpoint import random_models
    from varrt.export.graphs import FastVarShape, fastvar_spec, graph_module

    var, _ = random_models("var-d16")
    spec = fastvar_spec(var.cfg, FastVarShape(2, 256, 64, 680, (2, 14), past=424))
    feeds = random_feeds(spec, 680, var.cfg.num_classes, seed=0)
    module = graph_module("transformer_fastvar", var, None, (2, 14))
    names = [t.name for t in spec.inputs]
    with torch.no_grad():
        a = module(*(feeds[n] for n in names))
        for seed in range(4):
            noise = torch.randn(feeds["x"].shape, generator=torch.Generator().manual_seed(seed))
            b = module(*({**feeds, "x": feeds["x"] * (1 + 1e-6 * noise)}[n] for n in names))
            for name, p, q in zip([t.name for t in spec.outputs], a, b):
                if name == "new_kv":
                    p, q = slot_order_free(p), slot_order_free(q)
                assert (p - q).abs().max() <= 1e-4 * p.abs().max(), f"{name}, nudge {seed}"


def test_a_group_split_carries_every_field_of_its_samples():
    """Splitting a batch between plans (SkipVAR, LD-Pruning) keeps each sample's rows of every field."""
    import dataclasses

    from varrt.runtime.groups import Group

    b, g = 3, torch.Generator().manual_seed(0)
    rows = lambda *shape: torch.randn(2 * b, *shape, generator=g)  # noqa: E731
    group = Group(
        samples=torch.arange(b),
        plan_idx=0,
        kv=rows(2, 2, 2, 5, 4),
        kv_bias=torch.zeros(2, 5),
        cond={"sos": rows(8)},
        slot=4,
        hidden=rows(4, 8),
        logits=rows(4, 16),
        entropy=rows(2, 4),
        entropy_grid=(2, 2),
        deltas=rows(2, 2, 4, 8),
        chunks=rows(2, 4, 8),
    )
    local = torch.tensor([0, 2])
    part = group.subset(local, plan_idx=3)
    picked = torch.tensor([0, 2, 3, 5])  # conditional rows, then the same samples' unconditional rows
    for f in dataclasses.fields(Group):
        old, new = getattr(group, f.name), getattr(part, f.name)
        if f.name in ("kv", "hidden", "logits", "entropy", "deltas", "chunks"):
            assert torch.equal(new, old[picked]), f.name
    assert (part.plan_idx, part.slot, part.entropy_grid, part.cfg_on) == (3, 4, (2, 2), True)
    assert torch.equal(part.samples, local) and torch.equal(part.cond["sos"], group.cond["sos"][picked])
    uncond = group.subset(local, plan_idx=3)
    part.keep_branch("cond")
    assert part.kv.shape[0] == part.deltas.shape[0] == part.entropy.shape[0] == 2
    uncond.keep_branch("uncond")  # the unconditional rows: the second half, a view
    assert torch.equal(uncond.kv, group.kv[picked[2:]]) and torch.equal(uncond.chunks, group.chunks[picked[2:]])
    assert uncond.kv.data_ptr() == uncond.kv._base.data_ptr() + 2 * uncond.kv[0].numel() * uncond.kv.element_size()


def test_a_padded_group_holds_copies_of_its_last_sample_and_hands_out_only_real_rows():
    """A group split off at a bucketed width: buffer rows padded with its last sample, per-row
    results (hidden, logits, ...) of its real samples only."""
    from varrt.runtime.groups import Group

    b, g = 3, torch.Generator().manual_seed(0)
    rows = lambda *shape: torch.randn(2 * b, *shape, generator=g)  # noqa: E731
    group = Group(torch.arange(b), 0, rows(2, 2, 2, 5, 4), torch.zeros(2, 5), {"sos": rows(8)}, hidden=rows(4, 8))
    part = group.subset(torch.tensor([0, 2]), plan_idx=1, width=4)
    assert (part.b, part.pad, part.width) == (2, 2, 4)
    held = torch.tensor([0, 2, 2, 2, 3, 5, 5, 5])  # samples 0, 2 and two copies of 2, in each CFG half
    assert torch.equal(part.kv, group.kv[held]) and torch.equal(part.cond["sos"], group.cond["sos"][held])
    assert torch.equal(part.hidden, group.hidden[torch.tensor([0, 2, 3, 5])])
    out = torch.arange(8.0).view(8, 1)  # a call's output rows
    assert part.real_rows(out).view(-1).tolist() == [0, 1, 4, 5]
    assert torch.equal(part.pad_rows(part.real_rows(out)), torch.tensor([0, 1, 1, 1, 4, 5, 5, 5.0]).view(8, 1))
    assert part.rows(torch.tensor([7, 9])).tolist() == [7, 9, 9, 9, 7, 9, 9, 9]
    part.keep_branch("cond")
    assert part.kv.shape[0] == 4 and part.hidden.shape[0] == 2 and part.real_rows(out[:4]).view(-1).tolist() == [0, 1]
    other = group.subset(torch.tensor([0, 2]), plan_idx=1, width=4)
    other.keep_branch("uncond")  # the unconditional rows of the padded buffer, the real rows' results
    assert torch.equal(other.kv, group.kv[held[4:]]) and torch.equal(other.hidden, group.hidden[torch.tensor([3, 5])])
