"""StageVAR: the low-rank graph against the formulas (numpy), its draws, its plans and its settings."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import INFINITY_POLICIES

from helpers import TINY_SCHEDULE
from varrt.export.configs import var_config
from varrt.export.infinity import scale_positions
from varrt.export.infinity_config import INFINITY_CONFIGS, TEMPLATES, InfinitySchedule
from varrt.export.infinity_graphs import infinity_graph_module
from varrt.export.stagevar import representative_positions
from varrt.export.var import Past
from varrt.runtime.flops import plan_flops
from varrt.runtime.lowrank import lowrank_draws
from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import make_policy
from varrt.runtime.policies.infinity import make_infinity_policy
from varrt.runtime.policies.stagevar import VAR_BRANCH

SCHED_1M = InfinitySchedule.for_ratio(1.0, "1M")
#: rank_ratio['0.96']['scale40'] of the official Infinity/infinity/utils/rank_ratio.py (facts sheet)
PUBLISHED_40 = (
    0.016776672694393688, 0.13648282097649195, 0.21039203774864412, 0.2502819846292948,
    0.2558836742766729, 0.1978790404611215, 0.1570015822784809, 0.19090034471066883,
)  # fmt: skip


# ------------------------------------------------------------------------------------------ the draw
def test_gumbel_top_k_is_sampling_without_replacement_in_proportion_to_the_norm_squared():
    """The first two positions against the exact probabilities of two draws without replacement,
    p(i, j) = w_i / W * w_j / (W - w_i), w = ||x||^2; a zero-norm token is never drawn."""
    norms = torch.tensor([1.0, 2.0, 0.5, 0.0, 1.5])
    x = torch.zeros(1, 5, 3)
    x[0, :, 1] = norms
    w = (norms**2).numpy()
    trials = 40_000
    g = -torch.empty(trials, 5).exponential_(generator=torch.Generator().manual_seed(0)).log()
    pos = representative_positions(x.expand(trials, -1, -1), g, 2).numpy()
    assert (pos != 3).all()
    counts = np.zeros((5, 5))
    np.add.at(counts, (pos[:, 0], pos[:, 1]), 1)
    total = w.sum()
    exact = np.array([[w[i] / total * w[j] / (total - w[i]) if i != j else 0.0 for j in range(5)] for i in range(5)])
    sigma = np.sqrt(exact * (1 - exact) / trials).max()
    assert np.abs(counts / trials - exact).max() < 5 * sigma, (counts / trials, exact)


def test_draws_are_per_sample_reproducible_and_distributed_as_published():
    ranks, n = (3, 7), 50
    g1, q1 = lowrank_draws(ranks, n, [0, 1, 2], (0, 1), seed=4, si=9)
    g2, q2 = lowrank_draws(ranks, n, [2], (1,), seed=4, si=9)  # sample 2's unconditional row, alone
    assert g1.shape == (6, 2, n) and [q.shape for q in q1] == [(6, n, 3), (6, n, 7)]
    assert torch.equal(g2[0], g1[5]) and all(torch.equal(a[0], b[5]) for a, b in zip(q2, q1))
    g3, _ = lowrank_draws(ranks, n, [0], (0,), seed=5, si=9)
    assert not torch.equal(g3[0], g1[0])  # another request seed, other draws
    # one seed per sample: sample i draws as sample 0 of a batch seeded seed[i] (its own seed alone)
    g4, q4 = lowrank_draws(ranks, n, [0, 1], (1,), seed=[7, 5], si=9)
    g5, q5 = lowrank_draws(ranks, n, [0], (1,), seed=5, si=9)
    assert torch.equal(g4[1], g5[0]) and all(torch.equal(a[1], b[0]) for a, b in zip(q4, q5))
    assert not torch.equal(g4[0], g4[1])
    # Q ~ N(0, 1/r); g ~ Gumbel(0, 1) (mean: Euler's gamma, variance pi^2 / 6)
    big_g, big_q = lowrank_draws((40,), 4000, list(range(4)), (0,), seed=0, si=3)
    q = big_q[0]
    assert abs(q.mean().item()) < 0.005 and abs(q.var().item() * 40 - 1) < 0.02
    assert abs(big_g.mean().item() - 0.5772) < 0.03 and abs(big_g.var().item() - math.pi**2 / 6) < 0.1
    # no seed: torch's global generator, as the official code
    torch.manual_seed(11)
    a, _ = lowrank_draws(ranks, n, [0], (0,), seed=None, si=9)
    torch.manual_seed(11)
    b, _ = lowrank_draws(ranks, n, [0], (0,), seed=None, si=9)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ the graph
def _layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _first_block_kv(attn, ada: np.ndarray, m: np.ndarray, eps: float, angles: np.ndarray | None):
    """The keys (normalised, rotated by ``angles`` (r, d/2) when given) and values of the mixtures
    ``m`` (R, r, C) in the first block of their chunk, from the formulas: (R, H, r, d) each."""
    c = m.shape[-1]
    scale1, shift1 = ada[:, 2][:, None], ada[:, 4][:, None]
    y = _layer_norm(m, eps) * (1 + scale1) + shift1
    w = attn.mat_qkv.weight.double().numpy()
    heads, d = attn.heads, attn.head_dim
    k = (y @ w[c : 2 * c].T).reshape(*m.shape[:2], heads, d).transpose(0, 2, 1, 3)
    v = (y @ w[2 * c :].T + attn.v_bias.double().numpy()).reshape(*m.shape[:2], heads, d).transpose(0, 2, 1, 3)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    if angles is not None:  # interleaved pairs (k[2i], k[2i+1]) turn by angle i
        a, b = k[..., 0::2], k[..., 1::2]
        cos, sin = np.cos(angles), np.sin(angles)
        k = np.stack((a * cos - b * sin, a * sin + b * cos), axis=-1).reshape(k.shape)
    return k, v


def check_against_formulas(outputs, feeds, ranks, x, first_kv, run_blocks, chunk=1):
    """A low-rank graph's ``outputs`` (logits, positions, new_kv, chunk_hidden), chunk by chunk,
    against the formulas, chunk c's input being the graph's own output of chunk c - 1 (x: chunk 0's):
    the positions (the r largest log ||x||^2 + g, largest first), the mixtures Q^T X through their
    keys and values in the chunk's first block (``first_kv(block, m)``; on Infinity with the RoPE
    of raster positions 0..r-1), the restoration (``chunk_restore`` everywhere but at the
    positions, exactly) and the pairing (``run_blocks(c, m)``, the chunk's blocks on the mixtures:
    mixture j lands at the j-th position)."""
    _, positions, new_kv, chunk_hidden = (np.asarray(o, dtype=np.float64) for o in outputs)
    positions = positions.astype(np.int64)
    gumbel, restore = feeds["gumbel"].double().numpy(), feeds["chunk_restore"].double().numpy()
    off = 0
    for c, r in enumerate(ranks):
        q = feeds[f"proj{c}"].double().numpy()
        key = np.log((x**2).sum(-1)) + gumbel[:, c]
        expected = np.argsort(-key, axis=1, kind="stable")[:, :r]
        assert (positions[:, off : off + r] == expected).all(), f"chunk {c}: positions"
        m = np.einsum("bnr,bnc->brc", q, x)
        k, v = first_kv(c * chunk, m)
        np.testing.assert_allclose(new_kv[:, c * chunk, 0, :, :r], k, atol=2e-4, err_msg=f"chunk {c}: keys")
        np.testing.assert_allclose(new_kv[:, c * chunk, 1, :, :r], v, atol=2e-4, rtol=1e-4, err_msg=f"chunk {c}")
        assert (new_kv[:, c * chunk, :, :, r:] == 0).all()
        out = chunk_hidden[:, c]
        hit = np.zeros(out.shape[:2], dtype=bool)
        np.put_along_axis(hit, expected, True, axis=1)
        np.testing.assert_allclose(out[~hit], restore[:, c][~hit], rtol=0, atol=1e-6, err_msg=f"chunk {c}: restore")
        landed = np.take_along_axis(out, expected[..., None], 1)
        np.testing.assert_allclose(landed, run_blocks(c, m), atol=2e-4, rtol=1e-4, err_msg=f"chunk {c}: pairing")
        x, off = out, off + r
    assert off == positions.shape[1]


def _ort_component(artifact, component):
    from varrt.export.artifact import read_manifest

    return ort.InferenceSession(str(artifact / read_manifest(artifact).components[component]["file"]))


@pytest.fixture(scope="module")
def infinity_feeds(tiny_infinity_models):
    """Scale 4 (8x8) of the tiny Infinity after a dense cache of scales 0-3; four chunks of one
    block with distinct ranks (the graph's ranks are dims: any r <= N runs in one graph)."""
    from varrt.export.infinity import text_bias

    model = tiny_infinity_models[0]
    cfg, sched, b = model.cfg, TINY_SCHEDULE, 2
    gen = torch.Generator().manual_seed(3)
    text, mask = torch.randn(b, 16, cfg.text_channels, generator=gen), torch.ones(b, 16)
    mask[1, 9:] = 0
    cond = model.condition(text, mask, torch.tensor([0.0, 1.0]))
    past = sched.begin_ends[4][0]  # the live prefix the call reads: the graph never touches the rest
    kv, _ = model.empty_kv(b, sched.total_tokens)
    kv.normal_(generator=gen)
    bias = torch.zeros(cfg.depth, past)
    bias[2, 3:9] = -torch.inf  # per block
    n, ranks = sched.tokens(4), (5, 9, 13, 7)
    gumbel, proj = lowrank_draws(ranks, n, [0, 1], (1,), seed=0, si=4)
    feeds = {
        "x": torch.randn(b, n, cfg.d_vae, generator=gen),
        "pos": scale_positions(sched, 4).expand(b, -1, -1).contiguous(),
        **cond._asdict(),
        "text_bias": text_bias(mask),
        "kv": kv,
        "kv_bias": bias,
        "gumbel": gumbel,
        "chunk_restore": torch.randn(b, 4, n, cfg.width, generator=gen),
        **{f"proj{c}": q for c, q in enumerate(proj)},
    }
    return model, feeds, ranks


def test_infinity_low_rank_graph_computes_the_formulas_on_torch_and_ort(infinity_feeds, infinity_artifact):
    model, feeds, ranks = infinity_feeds
    sess = _ort_component(infinity_artifact, "infinity_transformer_stagevar")
    names = [i.name for i in sess.get_inputs()]
    assert names[-len(ranks) :] == [f"proj{c}" for c in range(4)]
    got_ort = sess.run(None, {k: feeds[k].numpy() for k in names})
    module = infinity_graph_module("infinity_transformer_stagevar", model, None, None, (1, 2, 3, 4))
    with torch.no_grad():
        got_torch = [t.numpy() for t in module(*(feeds[k] for k in names))]
    # chunk 0's input by hand: word_embed of the codes + lvl_embed[4]
    we = model.word_embed
    h0 = feeds["x"].double().numpy() @ we.weight.double().numpy().T + we.bias.double().numpy()
    h0 = h0 + model.lvl_embed.weight[4].double().numpy()
    pos, freqs = feeds["pos"][0].numpy(), model.rope_inv_freq.double().numpy()

    def first_kv(i, m):  # RoPE angles of raster positions 0..r-1: (row, col) x the frequencies
        r = m.shape[1]
        angles = np.concatenate((pos[:r, 1:2] * freqs, pos[:r, 2:3] * freqs), -1)
        return _first_block_kv(model.blocks[i].sa, feeds["ada"][:, i].double().numpy(), m, model.cfg.norm_eps, angles)

    def run_blocks(c, m):
        r, bias = m.shape[1], feeds["kv_bias"][c]
        past = Past(feeds["kv"][:, c, 0, :, : bias.shape[0]], feeds["kv"][:, c, 1, :, : bias.shape[0]], bias)
        with torch.no_grad():
            y, _, _ = model.blocks[c](
                torch.from_numpy(m).float(), feeds["ada"][:, c], model.rope(feeds["pos"][:, :r]), past,
                feeds["ca_kv"][:, c], feeds["text_bias"],
            )  # fmt: skip
        return y.double().numpy()

    for got in (got_torch, got_ort):
        check_against_formulas(got, feeds, ranks, h0, first_kv, run_blocks)
        head = model.logits(torch.from_numpy(got[3][:, -1]).float(), feeds["head_ada"]).numpy()
        np.testing.assert_allclose(got[0], head, atol=1e-4)
    assert np.array_equal(got_torch[1], got_ort[1])


def test_var_low_rank_graph_computes_the_formulas_on_torch_and_ort(policy_artifact, tiny_models):
    """VAR (absolute positions added once, no RoPE): per block, at the last scale (16x16) of the tiny VAR."""
    from varrt.export.graphs import graph_module

    var = tiny_models[0]
    cfg, b = var.cfg, 2
    gen = torch.Generator().manual_seed(8)
    cond = var.condition(torch.tensor([5, cfg.num_classes]))
    begin, end = cfg.schedule.begin_ends[9]
    n, ranks = end - begin, (11, 30)
    kv, _ = var.empty_kv(b, begin + 5)  # the graph reads the live prefix of begin + 3 slots only
    kv.normal_(generator=gen)
    bias = torch.zeros(cfg.depth, begin + 3)
    bias[1, -3:] = -torch.inf  # per block
    gumbel, proj = lowrank_draws(ranks, n, [0, 1], (0,), seed=2, si=9)
    feeds = {
        "x": torch.randn(b, n, cfg.latent_channels, generator=gen),
        "pos_idx": torch.arange(begin, end).expand(b, -1).contiguous(),
        **cond._asdict(),
        "kv": kv,
        "kv_bias": bias,
        "gumbel": gumbel,
        "chunk_restore": torch.randn(b, 2, n, cfg.width, generator=gen),
        **{f"proj{c}": q for c, q in enumerate(proj)},
    }
    sess = _ort_component(policy_artifact, "transformer_stagevar")
    names = [i.name for i in sess.get_inputs()]
    got_ort = sess.run(None, {k: feeds[k].numpy() for k in names})
    module = graph_module("transformer_stagevar", var, None, (1, 2))
    with torch.no_grad():
        got_torch = [t.numpy() for t in module(*(feeds[k] for k in names))]
        h0 = var.embed(feeds["x"], feeds["pos_idx"], feeds["sos"]).double().numpy()
    table = var.level_position_table()[begin:end].double().numpy()  # chunk 0's input by hand, too
    we = var.word_embed
    by_hand = feeds["x"].double().numpy() @ we.weight.double().numpy().T + we.bias.double().numpy() + table
    np.testing.assert_allclose(h0, by_hand, atol=1e-5)

    def first_kv(i, m):
        return _first_block_kv(var.blocks[i].attn, feeds["ada"][:, i].double().numpy(), m, cfg.norm_eps, None)

    def run_blocks(c, m):
        bias = feeds["kv_bias"][c]
        past = Past(kv[:, c, 0, :, : bias.shape[0]], kv[:, c, 1, :, : bias.shape[0]], bias)
        with torch.no_grad():
            y, _, _ = var.blocks[c](torch.from_numpy(m).float(), feeds["ada"][:, c], None, past)
        return y.double().numpy()

    for got in (got_torch, got_ort):
        check_against_formulas(got, feeds, ranks, h0, first_kv, run_blocks)
    assert np.array_equal(got_torch[1], got_ort[1])


# ------------------------------------------------------------------------------------------ plans and settings
@pytest.mark.parametrize(("model", "chunk"), [("infinity-2b", 4), ("infinity-8b", 5)])
def test_published_setting_on_infinity(model, chunk):
    """interactive_infer(_8B).py: alpha 0.96, cfg 0 (the unconditional branch) for the last three
    scales, 48x48 and 64x64 not run, 40x40 low-rank in the checkpoint's 8 chunks; the ranks are the
    facts sheet's int(ratio * 1600) + 1 of the published table."""
    depth = INFINITY_CONFIGS[model].depth
    plan = make_infinity_policy("stagevar", SCHED_1M, depth).plans[0]
    assert [s.run for s in plan.scales] == [True] * 11 + [False] * 2
    assert [s.cfg for s in plan.scales] == ["both"] * 10 + ["uncond"] * 3
    assert plan.scales[10].ranks == (27, 219, 337, 401, 410, 317, 252, 306) and plan.lowrank_chunk == chunk
    assert [s.ranks for s in plan.scales[:10]] == [None] * 10
    # the scale before the low-rank one hands on its 8 chunk outputs; nothing reads the 40x40 keys
    prev, low = plan.step_shape(9, SCHED_1M, 1, 3000), plan.step_shape(10, SCHED_1M, 1, 3000)
    assert prev.chunk == chunk and prev.rows == 2 and low.rows == 1 and not low.returns_state
    assert plan.slots(10, SCHED_1M) == 0 and plan.capacity(SCHED_1M) == sum(SCHED_1M.tokens(s) for s in range(10))
    alpha = make_infinity_policy("stagevar:alpha=0.90", SCHED_1M, depth).plans[0]
    assert alpha.scales[10].ranks == (22, 102, 190, 244, 264, 205, 172, 214)


def test_plan_show_lists_the_skipped_scales_and_the_unconditional_branch(capsys):
    from varrt.runtime.cli import main

    assert main(["plan", "show", "stagevar", "--model", "infinity-2b"]) == 0
    lines = {line.split("│")[2].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 8}
    assert "skip" in lines["48x48"] and "skip" in lines["64x64"] and "yes" in lines["40x40"]
    assert all("uncond" in lines[g] for g in ("40x40", "48x48", "64x64"))
    assert "uncond" not in lines["32x32"] and "r 27-410/1600" in lines["40x40"] and "stagevar" in lines["40x40"]
    assert main(["plan", "show", "stagevar", "--model", "infinity-2b", "--json"]) == 0
    (plan,) = json.loads(capsys.readouterr().out)["plans"]
    scales = plan["scales"]
    assert [s["run"] for s in scales[-3:]] == [True, False, False] and plan["lowrank_chunk"] == 4
    assert [s["cfg"] for s in scales[-4:]] == ["both", "uncond", "uncond", "uncond"]
    assert scales[10]["ranks"] == [27, 219, 337, 401, 410, 317, 252, 306] and scales[9]["ranks"] is None


def test_every_template_is_accelerated_by_scale_index():
    """The official code keys on widths 40/48/64 (non-square templates: cfg 0 only, or a crash);
    varrt's rules read scale indices, so every template gets the same treatment."""
    for ratio in TEMPLATES:
        sched = InfinitySchedule.for_ratio(ratio, "1M")
        plan = make_infinity_policy("stagevar", sched, 32).plans[0].validate(sched, 32)
        assert [s.run for s in plan.scales][-3:] == [True, False, False]
        assert plan.scales[10].ranks is not None and plan.scales[10].cfg == "uncond"
        n = sched.tokens(10)
        assert plan.scales[10].ranks == tuple(int(x * n) + 1 for x in PUBLISHED_40)


def test_var_setting_and_tiny_infinity_setting():
    """VAR: STAR/HART's shape — the last two scales on one branch, low rank at the last scale per
    block, r = int(ratio * min(N, C)) + 1 with HART's 24-entry table mapped by relative depth."""
    cfg = var_config("var-d16")
    plan = make_policy("stagevar", cfg).plans[0]
    assert [s.run for s in plan.scales] == [True] * 10 and plan.lowrank_chunk == 1
    assert [s.cfg for s in plan.scales[-3:]] == ["both", VAR_BRANCH, VAR_BRANCH]
    assert [s.ranks is None for s in plan.scales] == [True] * 9 + [False]
    # block 0 of 16 covers 1.5 of HART's 24 blocks: its ratio is their mean over that stretch
    hart0 = (0.018744562601806715 + 0.023373292425588648 / 2) / 1.5
    assert plan.scales[9].ranks[0] == int(hart0 * 256) + 1 and len(plan.scales[9].ranks) == 16
    cond = make_policy("stagevar:branch=cond", cfg).plans[0]
    assert [s.cfg for s in cond.scales[-2:]] == ["cond", "cond"] and cond.scales[9].ranks == plan.scales[9].ranks
    # the tiny Infinity (7 scales, 4 blocks): 8x8 low-rank in four chunks of one block, 12x12 and 16x16 not run
    tiny = make_infinity_policy("stagevar", TINY_SCHEDULE, 4).plans[0]
    published = PUBLISHED_40
    means = [(published[2 * c] + published[2 * c + 1]) / 2 for c in range(4)]  # two of the 8 chunks each
    assert tiny.scales[4].ranks == tuple(int(r * 64) + 1 for r in means) and tiny.lowrank_chunk == 1
    assert [s.run for s in tiny.scales] == [True] * 5 + [False] * 2 and "stagevar" in INFINITY_POLICIES


def test_low_rank_flops_are_the_chunks_ranks_plus_the_mixing():
    cfg = var_config("var-d16")
    ranks = (40,) * 16
    low = Plan.full(cfg.schedule).with_scale(9, ranks=ranks, restore="stagevar", cfg="cond")
    low = Plan(low.name, low.scales, lowrank_chunk=1).validate(cfg.schedule, 16)
    budget = Plan.full(cfg.schedule).with_scale(9, budget=40, restore="cache", cfg="cond")
    f_low, f_budget = plan_flops(cfg, low)[9], plan_flops(cfg, budget)[9]
    assert f_low.linear == pytest.approx(f_budget.linear + 16 * 2 * 256 * 40 * cfg.width)
    assert f_low.attention == f_budget.attention and f_low.head == f_budget.head
    assert f_low.embed == pytest.approx(f_budget.embed * 256 / 40)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.with_scale(8, cfg="uncond").with_scale(9, cfg="cond"), "already kept only the 'uncond'"),
        (lambda p: p.with_scale(9, ranks=(5, 5)), "goes with ranks"),
        (lambda p: p.with_scale(9, ranks=(5,), restore="stagevar"), "one r in 1..256 per chunk"),
        (lambda p: p.with_scale(9, ranks=(5, 300), restore="stagevar"), "one r in 1..256"),
        (lambda p: p.with_scale(8, budget=100, restore="cache").with_scale(9, ranks=(5, 5), restore="stagevar"),
         "previous scale must run every token"),
        (lambda p: p.with_scale(8, ranks=(5, 5), restore="stagevar"), "runs after the low-rank scale 8 without"),
    ],
)  # fmt: skip
def test_impossible_low_rank_plans_are_refused(change, message):
    sched = var_config("var-tiny-d2").schedule
    plan = change(Plan("p", tuple(ScalePlan() for _ in sched.grids), lowrank_chunk=1))
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan.validate(sched, depth=2)
    with pytest.raises(PlanError, match="does not compose"):
        make_policy("stagevar+stepvar", var_config("var-tiny-d2"))
    with pytest.raises(PlanError, match="no published rank table for alpha=0.5"):
        make_infinity_policy("stagevar:alpha=0.5", SCHED_1M, 32)


def test_infinity_generation_runs_the_unconditional_rows_and_decodes_the_codes_up_to_the_low_rank_scale(
    tiny_infinity_models,
):
    """On the tiny Infinity: scale 4 (8x8) runs the null-text rows of the conditioning and the cache
    (rows B..2B-1, a view), 12x12 and 16x16 draw nothing, and the decoder reads the codes summed
    up to 8x8."""
    from varrt.engines.torch_engine import InfinityTorchEngine
    from varrt.runtime.bitwise import accumulate, bits_to_codes
    from varrt.runtime.infinity_generate import generate_infinity

    model, vae, te = tiny_infinity_models
    calls = []

    class Spy(InfinityTorchEngine):
        def run(self, graph, feeds):
            calls.append((graph, dict(feeds)))
            return super().run(graph, feeds)

    spy = Spy(model, vae, te)
    policy = make_infinity_policy("stagevar", TINY_SCHEDULE, 4)
    r = generate_infinity(spy, te, ["a red cat", "a house"], schedule=TINY_SCHEDULE, text_length=16, policy=policy)
    steps = [(g, f) for g, f in calls if g.component.startswith("infinity_transformer")]
    cond = next(f for g, f in calls if g.component == "infinity_conditioner")
    first, (low_graph, low) = steps[0][1], steps[-1]
    assert low_graph.component == "infinity_transformer_stagevar" and len(steps) == 5
    assert low["kv"].data_ptr() == first["kv"][2:].data_ptr() and low["kv"].shape[0] == 2
    for name in ("ada", "head_ada", "ca_kv", "text_bias"):
        assert torch.equal(low[name], first[name][2:]), name
    assert cond["uncond"].tolist() == [0.0, 0.0, 1.0, 1.0]  # rows 2-3 are the learned null text
    assert r.bits[5] is None and r.bits[6] is None
    summed = torch.zeros_like(r.codes)
    for si in range(5):
        summed = accumulate(summed, bits_to_codes(r.bits[si].long(), TINY_SCHEDULE.grids[si], False))
    torch.testing.assert_close(r.codes, summed)


def test_low_rank_plan_file_fields_are_type_checked():
    """A plan file's ``ranks`` and ``lowrank_chunk`` are data: wrong types get one line naming the field."""
    with pytest.raises(PlanError, match="scale 1: 'ranks' must be a list of mixture counts"):
        Plan.from_dict({"scales": [{}, {"ranks": "27,219", "restore": "stagevar"}], "lowrank_chunk": 1})
    with pytest.raises(PlanError, match="scale 1: 'ranks' must be a list"):
        Plan.from_dict({"scales": [{}, {"ranks": [27, 2.5], "restore": "stagevar"}], "lowrank_chunk": 1})
    with pytest.raises(PlanError, match="'lowrank_chunk' must be a number of blocks"):
        Plan.from_dict({"scales": [{}, {"ranks": [3], "restore": "stagevar"}], "lowrank_chunk": "4"})
    sched = var_config("var-tiny-d2").schedule
    d = {"scales": [{}] * 9 + [{"ranks": [5, 7], "restore": "stagevar", "cfg": "uncond"}], "lowrank_chunk": 1}
    plan = Plan.from_dict(d).validate(sched, depth=2)
    assert plan.scales[9].ranks == (5, 7) and Plan.from_dict(plan.to_dict()) == plan
