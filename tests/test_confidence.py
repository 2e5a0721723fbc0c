"""Per-scale confidence: the recorder sees the distributions the sampler drew from, and changes nothing."""

from __future__ import annotations

import math

import torch

from helpers import tiny_var, tiny_vqvae
from varrt.engines.torch_engine import TorchEngine
from varrt.runtime.confidence import ConfidenceRecorder, entropy_of, scale_confidence
from varrt.runtime.generate import generate
from varrt.runtime.plan import Plan
from varrt.runtime.sampling import SamplingConfig

PN = (1, 2, 3)


def _engine() -> TorchEngine:
    return TorchEngine(tiny_var(2, patch_nums=PN, vocab=64, num_classes=10), tiny_vqvae(patch_nums=PN, vocab=64))


def test_entropy_of_uniform_one_hot_and_masked():
    assert math.isclose(entropy_of(torch.zeros(8)).item(), math.log(8), rel_tol=1e-6)
    assert entropy_of(torch.tensor([0.0, -torch.inf, -torch.inf])).item() == 0.0
    assert math.isclose(entropy_of(torch.tensor([0.0, 0.0, -torch.inf])).item(), math.log(2), rel_tol=1e-6)


def test_recording_changes_no_token_and_sees_the_drawn_ones():
    engine = _engine()
    sampling = SamplingConfig(cfg=2.0, top_k=0, top_p=0.7)
    plain = generate(engine, [1, 2, 3], seed=5, sampling=sampling)
    recorder = ConfidenceRecorder(Plan.full(engine.var_config.schedule), sampling)
    seen = generate(engine, [1, 2, 3], seed=5, sampling=sampling, policy=recorder)
    assert all(torch.equal(a, b) for a, b in zip(plain.indices, seen.indices))
    for si, logp in enumerate(recorder.log_probs):
        assert logp.shape == (3, PN[si] ** 2, 64)
        drawn = logp.gather(-1, seen.indices[si].unsqueeze(-1))
        assert torch.isfinite(drawn).all()  # every drawn token survived the filters
        assert torch.allclose(logp.exp().sum(-1), torch.ones(()), atol=1e-5)


def test_scale_confidence_bounds_and_greedy_limit():
    engine = _engine()
    rows = scale_confidence(engine, [0, 4], [0, 1], SamplingConfig(cfg=1.0, top_k=0, top_p=0.9))
    assert [r["side"] for r in rows] == list(PN)
    for r in rows:
        assert 0 < r["p_sampled"] <= 1
        assert 0 <= r["entropy_sampled"] <= r["entropy"] + 1e-4 and r["entropy"] <= math.log(64) + 1e-4
    # top_p that keeps only the best token: each draw is certain, whatever the model's entropy
    greedy = scale_confidence(engine, [0, 4], [0], SamplingConfig(cfg=1.0, top_k=0, top_p=1e-6))
    assert all(r["p_sampled"] == 1.0 and r["entropy_sampled"] == 0.0 for r in greedy)
    assert greedy[-1]["entropy"] > 0.5  # a near-random tiny model is unsure, which the entropy says


def test_confidence_follows_the_guidance_of_each_scale():
    """At scale 0 the guidance is 0 (the ramp), so the entropy is that of the conditional logits."""
    engine = _engine()
    sampling = SamplingConfig(cfg=5.0, top_k=0, top_p=1.0)
    recorder = ConfidenceRecorder(Plan.full(engine.var_config.schedule), sampling)
    generate(engine, [7], seed=0, sampling=sampling, policy=recorder)
    cond = engine.var.condition(torch.tensor([7]))
    x = torch.zeros(1, 1, engine.var_config.latent_channels)
    kv, bias = engine.var.empty_kv(1, 14)
    logits = engine.var.step(x, torch.zeros(1, 1, dtype=torch.long), cond, kv, bias)[0]
    assert torch.allclose(recorder.entropy[0], entropy_of(logits), atol=1e-5)
