"""LD-Pruning, StepVAR, ToProVAR, StageVAR and composition: selectors on inputs with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from varrt.export.configs import var_config
from varrt.export.var import attention_entropy
from varrt.runtime.plan import PlanError
from varrt.runtime.policies import ScaleState, make_policy
from varrt.runtime.policies.ldpruning import LDPruningPolicy
from varrt.runtime.policies.stepvar import StepVarPolicy
from varrt.runtime.selectors import (
    branch_discrepancy,
    high_pass,
    latent_discrepancy,
    nearest_fill,
    seeded_subset,
    top_tokens,
    upsample_tokens,
)

CFG = var_config("var-tiny-d2")


def test_a_flat_region_is_pruned_before_an_edge():
    side = 6
    x = torch.zeros(1, side * side, 4)
    grid = x.view(1, side, side, 4)
    grid[:, :, 3:, :] = 1.0  # a vertical edge between columns 2 and 3; flat on both sides
    texture = high_pass(x, side).view(side, side)
    assert texture[:, 2:4].min() > texture[:, :2].max() and texture[:, :2].max() == 0
    policy = StepVarPolicy(CFG, alpha=1.0)
    kept = top_tokens(policy.scores(x, side), 12)
    assert sorted((kept[0] % side).unique().tolist()) == [2, 3]  # the two columns at the edge


def test_latent_discrepancy_points_at_what_changed():
    before = torch.zeros(1, 8, 16, 16)
    now = before.clone()
    now[:, :, :4, :4] = 1.0  # the last scale only changed the top-left corner
    d = latent_discrepancy(now, before, 4)
    assert d.view(4, 4)[0, 0] > 0 and d.view(4, 4).flatten()[1:].max() == 0
    assert top_tokens(d, 1).tolist() == [[0]]


def test_selectors_read_rectangular_grids():
    """Infinity's templates are h x w: every selector takes the (h, w) of the scale."""
    fill = nearest_fill(torch.tensor([[0, 9]]), (2, 5)).view(2, 5)  # kept: (0, 0) and (1, 4)
    assert fill.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    up = upsample_tokens(torch.tensor([[[1.0], [2.0]]]), (1, 2), (2, 4)).view(2, 4)
    assert up.tolist() == [[1.0, 1.0, 2.0, 2.0]] * 2
    now = torch.zeros(1, 3, 4, 8)
    now[..., 2:, 6:] = 1.0  # the bottom-right corner changed
    d = latent_discrepancy(now, torch.zeros_like(now), (2, 4))
    assert top_tokens(d, 1).tolist() == [[7]] and d[0, :7].max() == 0
    x = torch.zeros(1, 12, 2)
    x.view(1, 3, 4, 2)[:, :, 2:] = 1.0  # a vertical edge on a 3 x 4 map
    texture = high_pass(x, (3, 4)).view(3, 4)
    assert texture[:, 1:3].min() > 0 and texture[:, 0].max() == 0 and texture[:, 3].max() == 0


def test_converged_branch_discrepancy_switches_cfg_off_at_the_expected_scale():
    policy = LDPruningPolicy(CFG, threshold=0.1, min_scale=3)
    # logits whose cond/uncond distance shrinks 1.0 -> 0.5 -> 0.3 -> 0.28: converged after scale 3
    gaps = [4.0, 2.0, 1.2, 1.12, 1.1]
    switched_at = None
    for si, gap in enumerate(gaps):
        logits = torch.zeros(2, 3, 8)
        logits[0, :, 0] = gap  # conditional row prefers token 0 more and more weakly
        group = SimpleNamespace(samples=torch.tensor([0]), plan_idx=0, cfg_on=True, logits=logits, b=1)
        state = ScaleState(
            si=si,
            samples=torch.tensor([0]),
            x=torch.zeros(1, 1, 1),
            plan=None,
            engine=None,
            schedule=CFG.schedule,
            f_hat=torch.zeros(1, 1, 1, 1),
            groups=[group],
        )
        assign = policy.after_scale(state)
        if assign is not None:
            switched_at = si
            assert policy.plans[int(assign[0])].name == f"ld-pruning-cfgoff{si + 1}"
            break
    d = [branch_discrepancy(torch.tensor([[[g] + [0.0] * 7]]), torch.zeros(1, 1, 8)).item() for g in gaps]
    expected = next(si for si in range(3, len(d)) if abs(d[si] - d[si - 1]) / d[si - 1] < 0.1)
    assert switched_at == expected == 3


def test_entropy_of_one_hot_and_uniform_rows():
    one_hot = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    uniform = torch.full((1, 8), 1 / 8)
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_entropy(uniform).item() == pytest.approx(math.log(8), rel=1e-6)


def test_random_projection_is_reproducible_by_seed():
    a, b, c = seeded_subset(2, 100, 10, 7, 8), seeded_subset(2, 100, 10, 7, 8), seeded_subset(2, 100, 10, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a.diff(dim=1) > 0).all()


def test_composition_is_data():
    policy = make_policy("skipvar+stepvar", CFG)
    assert len(policy.plans) == 7 and policy.split_from == make_policy("skipvar", CFG).split_from
    assert all(p.scales[9].restore == "nearest" or not p.scales[9].run for p in policy.plans)
    skip3 = policy.plans[3]
    assert not skip3.scales[9].run and skip3.scales[6].budget is None
    with pytest.raises(PlanError, match="both make run-time decisions"):
        make_policy("skipvar+ld-pruning", CFG)
    with pytest.raises(PlanError, match="FastVAR prunes inside its own graph"):
        make_policy("fastvar+stepvar", CFG)
    with pytest.raises(PlanError, match="ToProVAR prunes inside its own graph"):
        make_policy("stepvar+toprovar", CFG)


def test_stagevar_runs_one_branch_in_the_last_two_scales_and_the_last_low_rank():
    for branch in ("cond", "uncond"):
        plan = make_policy(f"stagevar:branch={branch}", CFG).plans[0]
        assert [s.cfg for s in plan.scales] == ["both"] * 8 + [branch] * 2
        assert [s.ranks is not None for s in plan.scales] == [False] * 9 + [True]
        assert [s.budget for s in plan.scales] == [None] * 10


@pytest.mark.parametrize(
    "spec", ["fastvar", "toprovar", "toprovar:layer_score=0.5/2", "stagevar", "ld-pruning", "skipvar+stepvar"]
)
def test_every_policy_plan_survives_a_file_roundtrip(spec, tmp_path):
    import json

    from varrt.runtime.plan import Plan

    for plan in make_policy(spec, CFG).plans:
        path = tmp_path / "p.json"
        path.write_text(json.dumps(plan.to_dict()))
        assert Plan.load(path) == plan


def test_a_skipped_block_passes_its_tokens_through_and_only_adds_keys_and_values(tiny_models):
    from varrt.export.graphs import StepShape, graph_module, transformer_spec
    from varrt.export.var import Past

    var = tiny_models[0]
    torch.manual_seed(0)
    cond = var.condition(torch.tensor([3, 1000]))
    n, t = 4, 5  # scale 2 (2x2) after the start token
    x, pos = torch.randn(2, n, CFG.latent_channels), torch.arange(1, 1 + n).expand(2, -1)
    kv = torch.randn(2, CFG.depth, 2, CFG.heads, t, CFG.head_dim)
    bias = torch.zeros(t)
    fill = torch.arange(n).expand(2, -1), torch.ones(2, n), torch.zeros(2, n, CFG.width)
    with torch.no_grad():
        logits, new_kv, hidden = var.step(x, pos, cond, kv, bias, *fill, layers=(0,))
        # by hand: block 0 as usual, block 1 untouched except for its keys and values
        h = var.embed(x, pos, cond.sos)
        h, k0, v0 = var.blocks[0](h, cond.ada[:, 0], None, Past(kv[:, 0, 0], kv[:, 0, 1], bias))
        k1, v1 = var.blocks[1].keys_values(h, cond.ada[:, 1])
        graph = graph_module("transformer_layers", var, None, (0,))
        spec = transformer_spec(CFG, StepShape(2, n, n, t, layers=(0,), past=t))
        via_graph = graph(x, pos, cond.sos, cond.ada, cond.head_ada, kv, bias, *fill)
    torch.testing.assert_close(hidden, h)
    torch.testing.assert_close(logits, var.logits(h, cond.head_ada))
    torch.testing.assert_close(new_kv, torch.stack((torch.stack((k0, v0), 1), torch.stack((k1, v1), 1)), 1))
    assert spec.component == "transformer_layers" and spec.blocks == (0,)
    torch.testing.assert_close(via_graph[0], logits)


# ------------------------------------------------------------------------------------------ LD-Pruning / StepVAR knobs
def test_start_and_keep_name_the_pruned_scales():
    budgets = lambda spec: [s.budget for s in make_policy(spec, CFG).plans[0].scales]  # noqa: E731
    n = [CFG.schedule.tokens(si) for si in range(10)]
    assert budgets("stepvar:start=7,keep=0.5") == [None] * 7 + [n[7] - n[7] // 2, n[8] - n[8] // 2, n[9] // 2]
    assert budgets("stepvar:keep=0.5/0.5") == budgets("stepvar:start=8,keep=0.5")
    assert budgets("ld-pruning:start=8,keep=0.7/0.4") == budgets("ld-pruning:keep=0.7/0.4")
    with pytest.raises(PlanError, match="keep has 2 fractions for the 3 scales from start 7"):
        make_policy("stepvar:start=7,keep=0.5/0.5", CFG)
    with pytest.raises(PlanError, match="start must be a scale in 1..9"):
        make_policy("ld-pruning:start=10", CFG)


def test_a_batch_of_10_split_by_skipvar_needs_4_group_sizes_per_scale_not_10():
    """Bucketed group sizes: after SkipVAR's decision a batch of 10 runs at widths 10, 5, 2, 1
    (padded), so each (scale, budget, CFG mode) has 4 shapes instead of one per size 1..10."""
    from collections import defaultdict

    from varrt.runtime.plan import group_bucket, group_sizes, step_shapes

    assert group_sizes(10) == (1, 2, 5, 10) and group_sizes(16) == (1, 2, 4, 8, 16) and group_sizes(1) == (1,)
    assert [group_bucket(s, 10) for s in range(1, 11)] == [1, 2, 5, 5, 5, 10, 10, 10, 10, 10]
    with pytest.raises(PlanError, match="does not fit"):
        group_bucket(11, 10)
    policy = make_policy("skipvar", CFG)
    sched = CFG.schedule

    def per_scale(sizes):
        shapes = defaultdict(set)  # (scale, budget, rows per sample) -> rows
        for plan in policy.plans:
            for si in plan.run_scales():
                if si < policy.split_from:
                    continue
                for b in sizes:
                    shape = plan.step_shape(si, sched, b, 680)
                    shapes[si, shape.tokens, shape.rows // b].add(shape.rows)
        return {k: len(v) for k, v in shapes.items()}

    assert set(per_scale(group_sizes(10)).values()) == {4}
    assert set(per_scale(range(1, 11)).values()) == {10}
    bucketed = step_shapes(policy.plans, sched, 10, policy.split_from)
    every = step_shapes(policy.plans, sched, 10, policy.split_from, sizes=range(1, 11))
    assert set(bucketed) < set(every) and len(every) - len(bucketed) == 3 * (15 - 6)  # 3 scales: 15 -> 6 shapes


def test_laplacian_filter_and_l1_and_js_measures():
    x = torch.zeros(1, 9, 1)
    x[0, 4, 0] = 1.0  # one bright token in the middle of a 3 x 3 map
    lap = high_pass(x, 3, "laplacian").view(3, 3)
    assert lap[1, 1] == 4 and lap[0, 1] == lap[1, 0] == 1 and lap[0, 0] == 0  # -4 at the centre, 1 at its neighbours
    box = high_pass(x, 3, "box").view(3, 3)
    assert box[1, 1] == pytest.approx(8 / 9) and box[0, 0] == pytest.approx(1 / 9)  # replicate padding at the corner
    now = torch.zeros(1, 2, 2, 2)
    now[0, :, 0, 0] = torch.tensor([3.0, -4.0])
    assert latent_discrepancy(now, torch.zeros_like(now), 2, "l1")[0, 0] == 7
    assert latent_discrepancy(now, torch.zeros_like(now), 2, "l2")[0, 0] == 5
    p, q = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[math.log(3.0), 0.0]]])  # (1/2, 1/2) vs (3/4, 1/4)
    m = (0.625, 0.375)
    kl = lambda a: sum(ai * math.log(ai / mi) for ai, mi in zip(a, m))  # noqa: E731
    assert branch_discrepancy(p, q, "js").item() == pytest.approx(0.5 * kl((0.5, 0.5)) + 0.5 * kl((0.75, 0.25)))
    assert branch_discrepancy(p, q, "tv").item() == pytest.approx(0.25)
    with pytest.raises(PlanError, match="filter one of"):
        make_policy("stepvar:filter=sobel", CFG)
    with pytest.raises(PlanError, match="measure must be one of"):
        make_policy("ld-pruning:measure=l3", CFG)


def test_ld_pruning_without_cfg_stopping_has_one_plan():
    policy = make_policy("ld-pruning:threshold=0,restore=nearest", CFG)
    assert len(policy.plans) == 1 and policy.split_from is None
    assert {s.restore for s in policy.plans[0].scales} == {"none", "nearest"}
    state = SimpleNamespace(f_hat=torch.zeros(1, 1, 1, 1), groups=[], si=6)
    assert policy.after_scale(state) is None
    assert policy.options == {
        "keep": [0.5, 0.5],
        "start": 8,
        "measure": "l2",
        "branch": "tv",
        "threshold": 0.0,
        "min_scale": 5,
        "restore": "nearest",
    }
