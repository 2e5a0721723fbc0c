"""Infinity's sampler and generation loop: bitwise sampling, determinism, backends, policies, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import INFINITY_POLICIES, INFINITY_SKIPVAR, INFINITY_TOPROVAR

from helpers import TINY_SCHEDULE, tiny_bsq_vae, tiny_infinity
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import InfinityTorchEngine
from varrt.export.infinity_config import InfinitySchedule
from varrt.export.text_encoder import save_text_encoder, text_bucket
from varrt.runtime.bitwise import BitwiseSampling, bits_to_codes, guided_bit_logits, next_input, sample_bits
from varrt.runtime.infinity_generate import generate_infinity
from varrt.runtime.plan import PlanError
from varrt.runtime.policies.infinity import make_infinity_policy

PROMPTS = ["a red cat on the sky", "a small house by the sea"]


def test_guidance_temperature_and_top_p():
    logits = torch.randn(4, 3, 8)  # 2 cond rows, 2 uncond rows, 3 tokens, 4 bits
    s = BitwiseSampling(cfg=3.0, tau=0.5)
    g = guided_bit_logits(logits, 2, s)
    ref = (3.0 * logits[:2] / 0.5 - 2.0 * logits[2:] / 0.5).reshape(2, 12, 2)
    torch.testing.assert_close(g, ref)
    # top-p 0.97: a bit whose minority probability is <= 0.03 is taken deterministically
    p_min = torch.tensor([0.0299, 0.0301])
    pair = torch.stack((p_min.log(), (1 - p_min).log()), -1).view(1, 2, 2).repeat(2000, 1, 1).reshape(2000, 4)
    bits, _ = sample_bits(
        pair.view(2000, 2, 2), 2000, BitwiseSampling(cfg=1.0, top_p=0.97), torch.Generator().manual_seed(0)
    )
    assert bits[:, 0, 0].sum() == 2000  # never the 0.0299 side
    assert 0 < (bits[:, 1, 0] == 0).sum() < 200  # the 0.0301 side is drawn, rarely


def test_bits_codes_and_patchify_layout():
    bits = torch.randint(0, 2, (1, 4, 8))  # a 2x2 grid of 8-bit tokens
    codes = bits_to_codes(bits, (2, 2), patchify=False)
    assert codes.shape == (1, 8, 2, 2)
    torch.testing.assert_close(codes.square().sum(1), torch.ones(1, 2, 2))
    assert torch.equal(codes[0, :, 1, 0] > 0, bits[0, 2].bool())  # token (row 1, col 0) is row-major index 2
    patched = bits_to_codes(bits, (2, 2), patchify=True)  # 8 bits -> 2 channels x 2 x 2 sub-pixels
    assert patched.shape == (1, 2, 4, 4)
    k = 6  # channel k // 4 = 1 at sub-pixel ((k % 4) // 2, k % 2) = (1, 0) of token (0, 0)
    assert (patched[0, 1, 1, 0] > 0) == bool(bits[0, 0, k])
    # the next input of the patchified model unshuffles back to the token's 8 bits
    x = next_input(patched, (2, 2), patchify=True)
    assert torch.equal(x > 0, bits.bool())


def test_text_buckets():
    assert text_bucket([5, 12]) == 64
    assert text_bucket([65]) == 128
    assert text_bucket([300], maxlen=512) == 512
    assert text_bucket([9], maxlen=16) == 16


@pytest.fixture(scope="module")
def torch_engine(tiny_infinity_models):
    return InfinityTorchEngine(*tiny_infinity_models)


def test_seeds_negative_prompt_and_8b_layout(torch_engine, tiny_infinity_models):
    te = tiny_infinity_models[2]
    run = lambda **kw: generate_infinity(torch_engine, te, PROMPTS, schedule=TINY_SCHEDULE, text_length=16, **kw)  # noqa: E731
    a, b, c = run(seed=1), run(seed=1), run(seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))
    assert any(not torch.equal(x, y) for x, y in zip(a.bits, c.bits))
    assert a.images.shape == (2, 3, 64, 64) and a.images.min() >= 0 and a.images.max() <= 1
    neg = run(seed=1, negative_prompt="dark night")
    assert any(not torch.equal(x, y) for x, y in zip(a.bits, neg.bits))
    # the 8B's patchified tokens: 16 bits = 4 code channels x 2 x 2, decoded on the doubled grid
    big = InfinityTorchEngine(tiny_infinity(patchify=True), tiny_bsq_vae(code_bits=4), te)
    r = generate_infinity(big, te, PROMPTS[:1], schedule=TINY_SCHEDULE, text_length=16)
    assert r.codes.shape == (1, 4, 32, 32) and r.images.shape == (1, 3, 128, 128)


def test_torch_and_ort_draw_identical_bits(torch_engine, tiny_infinity_models, infinity_artifact):
    te = tiny_infinity_models[2]
    ort = OrtEngine(infinity_artifact)
    for seed in (0, 1, 2):
        for neg in (None, "dark night"):
            kw = dict(schedule=TINY_SCHEDULE, text_length=16, seed=seed, negative_prompt=neg)
            a = generate_infinity(torch_engine, te, PROMPTS, **kw)
            b = generate_infinity(ort, te, PROMPTS, **kw)
            assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits)), (seed, neg)
            torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)


def test_skipvar_decides_the_same_on_both_backends(torch_engine, tiny_infinity_models, infinity_artifact):
    te = tiny_infinity_models[2]
    ort = OrtEngine(infinity_artifact)
    policy = make_infinity_policy(INFINITY_SKIPVAR, TINY_SCHEDULE, 4)
    seen = set()
    for seed in (0, 1, 2, 3):
        kw = dict(schedule=TINY_SCHEDULE, text_length=16, seed=seed, policy=policy)
        a = generate_infinity(torch_engine, te, PROMPTS, **kw)
        b = generate_infinity(ort, te, PROMPTS, **kw)
        assert a.decisions == b.decisions and a.plans == b.plans
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a.bits, b.bits))
        seen.update(a.plans)
        for plan_name, bits in zip(a.plans, zip(*[t if t is not None else [None] * 2 for t in a.bits])):
            if plan_name.startswith("skipvar-skip"):  # a skipped scale draws nothing
                k = int(plan_name[-1])
                assert all(t is None or (t == -1).all() for t in bits[-k:])
    assert seen <= {p.name for p in policy.plans}


def test_published_skipvar_on_the_1024_schedule_and_bad_policies():
    sched = InfinitySchedule.for_ratio(1.0, "1M")
    policy = make_infinity_policy("skipvar:threshold=0.88", sched, 32)
    assert policy.decision == 9 and policy.grid == (8, 8) and len(policy.plans) == 7
    # the published decision map: little late high-frequency change -> skip 3; strong -> uncond
    assert policy.decide(torch.tensor([[0.03, 0.49], [0.22, 0.60]])).tolist()[0] == 3
    with pytest.raises(PlanError, match="unknown policy 'ld-prune'"):
        make_infinity_policy("ld-prune", sched, 32)
    with pytest.raises(PlanError, match="no published model"):
        make_infinity_policy("skipvar:threshold=0.5", sched, 32)


@pytest.mark.parametrize("h_div_w", [1.0, 0.5])
def test_published_fastvar_settings_on_infinity_2b(h_div_w):
    """615/1024 and 800/1600 at 32x32 and 40x40 in blocks 3-27, reference 24x24, 48 and 64 not run;
    by scale index, so a 1:2 template gets the same treatment (the released code keys on widths)."""
    sched = InfinitySchedule.for_ratio(h_div_w, "1M")
    plan = make_infinity_policy("fastvar", sched, 32).plans[0]
    assert plan.fastvar_blocks == (3, 28) and plan.fastvar_reference == 8
    # only the reference scale returns its deltas (the pruned scales read them); the others do not
    shapes = {si: plan.step_shape(si, sched, 1, 10_000) for si in (8, 9, 10)}
    assert [shapes[si].returns_deltas for si in (8, 9, 10)] == [True, False, False]
    budgets = [s.budget for s in plan.scales[9:11]]
    assert [s.run for s in plan.scales] == [True] * 11 + [False] * 2
    if h_div_w == 1.0:
        assert sched.grids[8] == (24, 24) and budgets == [615, 800]
    else:
        assert budgets == [sched.tokens(9) - int(0.4 * sched.tokens(9)), sched.tokens(10) - sched.tokens(10) // 2]


def test_fastvar_prunes_the_released_block_band_at_every_depth():
    """The released code prunes range(3, 28) whatever the depth: Infinity-8B gets 3-27 of 40 (not
    the depth-scaled [4, 35)), a shallower model the part of it that exists; `blocks=` overrides."""
    sched = InfinitySchedule.for_ratio(1.0, "1M")
    blocks = lambda spec, depth: make_infinity_policy(spec, sched, depth).plans[0].fastvar_blocks  # noqa: E731
    assert [blocks("fastvar", d) for d in (40, 32, 16, 4, 2)] == [(3, 28), (3, 28), (3, 16), (3, 4), (1, 2)]
    assert blocks("fastvar:blocks=4-35", 40) == (4, 35)


def test_every_policy_builds_on_every_template():
    """The VAR policies read (h, w) grids: each one plans on every aspect-ratio template."""
    from varrt.export.infinity_config import TEMPLATES

    for ratio in TEMPLATES:
        sched = InfinitySchedule.for_ratio(ratio, "1M")
        for spec in ("fastvar", "skipvar", "ld-pruning", "stepvar", "toprovar", "stagevar", "skipvar+stepvar"):
            for plan in make_infinity_policy(spec, sched, 32).plans:
                plan.validate(sched, 32)


class Spy:
    """An engine that records the graphs it runs (the torch backend does the work)."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run(self, graph, feeds):
        self.calls.append(graph.name)
        return self.engine.run(graph, feeds)


def test_policies_run_their_own_graphs(torch_engine, tiny_infinity_models):
    """What each policy's plans say reaches the engine: budgets, the FastVAR graph, the probe, the
    layer set, the skipped scales, the conditional-only rows."""
    te = tiny_infinity_models[2]

    def steps(spec: str) -> list[str]:
        spy = Spy(torch_engine)
        policy = make_infinity_policy(spec, TINY_SCHEDULE, 4)
        generate_infinity(spy, te, PROMPTS, schedule=TINY_SCHEDULE, text_length=16, policy=policy)
        return [c for c in spy.calls if c.startswith("infinity_transformer")]

    fast = steps("fastvar")  # scales 0-1 plain, 2 (reference) dense FastVAR, 3-4 pruned, 5-6 not run
    assert len(fast) == 5 and all("fastvar" in c for c in fast[2:])
    assert "_n36_k22_" in fast[3] and "_n64_k32_" in fast[4]
    step = steps("stepvar")  # the last two scales keep half their tokens
    assert "_n72_m144_" in step[5] and "_n128_m256_" in step[6]
    topro = steps(INFINITY_TOPROVAR)  # from scale 5 (the cut-off) the ToProVAR graph: a count per later block
    assert topro[4].startswith("infinity_transformer_r4_")
    assert topro[5].startswith("infinity_transformer_toprovar_e0_r4_n144_k65-83-29_")
    assert topro[6].startswith("infinity_transformer_toprovar_e0_r4_n256_k103-141-26_")
    # StageVAR: scale 3 hands on its chunk outputs (both branches), scale 4 is low-rank on the
    # unconditional rows, 5 and 6 do not run
    stage = steps("stagevar")
    assert len(stage) == 5 and stage[2].startswith("infinity_transformer_r4_")
    assert stage[3].startswith("infinity_transformer_chunks_r4_n36_") and stage[3].endswith("_c1_l16")
    assert stage[4].startswith("infinity_transformer_stagevar_c1_r2_n64_k5-15-15-12_")


@pytest.mark.parametrize("spec", [p for p in INFINITY_POLICIES if p not in ("full", INFINITY_SKIPVAR)])
def test_policies_decide_and_sample_the_same_on_torch_and_ort(
    spec, torch_engine, tiny_infinity_models, infinity_artifact
):
    te = tiny_infinity_models[2]
    ort = OrtEngine(infinity_artifact)
    policy = make_infinity_policy(spec, TINY_SCHEDULE, 4)
    for seed in (0, 1):
        kw = dict(schedule=TINY_SCHEDULE, text_length=16, seed=seed, policy=policy)
        a = generate_infinity(torch_engine, te, PROMPTS, **kw)
        b = generate_infinity(ort, te, PROMPTS, **kw)
        assert a.decisions == b.decisions and a.plans == b.plans
        for si, (x, y) in enumerate(zip(a.bits, b.bits)):
            assert (x is None and y is None) or torch.equal(x, y), f"{spec}, seed {seed}, scale {si}"
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)


def test_cli_generate_torch_and_ort(tmp_path, tiny_infinity_models, infinity_artifact):
    from varrt.runtime.cli import main

    model, vae, te = tiny_infinity_models
    torch.save(model.state_dict(), tmp_path / "infinity.pth")
    torch.save({"vae": vae.state_dict()}, tmp_path / "vae.pth")
    save_text_encoder(te, tmp_path / "t5")
    common = ["generate", "--text-encoder", str(tmp_path / "t5"), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    common += ["--pn", "0.06M", "--text-length", "16", "--quiet"]
    assert main([*common, "--checkpoint", str(tmp_path / "infinity.pth"), "--vae", str(tmp_path / "vae.pth"),
                 "--backend", "torch", "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    assert main([*common, "--artifact", str(infinity_artifact), "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["000.png", "001.png"]
    from PIL import Image

    a = torch.from_numpy(np.array(Image.open(tmp_path / "a" / "000.png"))).int()
    b = torch.from_numpy(np.array(Image.open(tmp_path / "b" / "000.png"))).int()
    assert (a - b).abs().max() <= 1
    assert main([*common, "--backend", "torch", "--out", str(tmp_path / "c")]) == 2  # no checkpoint: one-line error


# ------------------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # infinity-flops.md, 1024 px, Lt = 64, one branch, GFLOPs: scale -> (linear, self-attn + cross-attn QK/AV)
        ("infinity-2b", {0: (3.8, 0.02), 9: (3848.3, 676.7 + 17.18), 12: (15393.2, 11296.8 + 68.72)}),
        ("infinity-8b", {4: (920.7, 4.4 + 2.35), 12: (58927.0, 24711.8 + 150.32)}),
    ],
)
def test_plan_flops_match_infinity_flops_doc(model, expected):
    from varrt.export.infinity_config import INFINITY_CONFIGS
    from varrt.runtime.flops import conditioner_flops, plan_flops
    from varrt.runtime.plan import Plan

    cfg, sched = INFINITY_CONFIGS[model], InfinitySchedule.for_ratio(1.0, "1M")
    flops = plan_flops(cfg, Plan.full(sched), 1, sched, text=64)
    for si, (linear, attention) in expected.items():
        half = flops[si].linear / 2e9, flops[si].attention / 2e9  # both CFG rows counted
        assert half == pytest.approx((linear, attention), rel=2e-3, abs=0.05), si
    # the text's keys and values: once per generation here, once per scale in the official code;
    # the conditioner adds the text projection and AdaLN (a few % on top)
    kv_proj = {"infinity-2b": 34.36, "infinity-8b": 131.53}[model]
    assert kv_proj < conditioner_flops(cfg, 1, 64) / 2e9 < 1.05 * kv_proj


def test_plan_show_on_infinity(capsys):
    from varrt.runtime.cli import main

    assert main(["plan", "show", "fastvar", "--model", "infinity-2b", "--h-div-w", "0.5"]) == 0
    out = capsys.readouterr().out  # results go to stdout
    assert "infinity-2b" in out and "blocks [3, 28)" in out and "skip" in out
    sched = InfinitySchedule.for_ratio(0.5, "1M")
    h, w = sched.grids[9]
    assert f"{h}x{w}" in out and f"/{h * w}" in out  # the template's rectangular grid and its budget
