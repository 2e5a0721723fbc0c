"""Sampling semantics: filters, CFG ramp, seeds."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_var, tiny_vqvae
from varrt.engines.torch_engine import TorchEngine
from varrt.export.configs import phi_index_map
from varrt.runtime.generate import generate, resolve_labels
from varrt.runtime.sampling import SamplingConfig, cfg_mix, filter_top_k_top_p_


def test_top_k_keeps_ties():
    logits = torch.tensor([[[1.0, 3.0, 2.0, 3.0, 0.0]]])
    out = filter_top_k_top_p_(logits.clone(), top_k=2, top_p=1.0)
    assert torch.isinf(out).tolist() == [[[True, False, True, False, True]]]
    out = filter_top_k_top_p_(torch.tensor([[[1.0, 3.0, 2.0, 2.0]]]), top_k=2, top_p=1.0)
    assert torch.isinf(out).tolist() == [[[True, False, False, False]]]  # k-th value 2.0 appears twice


def test_top_p_removes_the_tail_and_keeps_the_best():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_top_k_top_p_(probs.log().view(1, 1, 4), top_k=0, top_p=0.8)
    # ascending cumulative mass 0.05, 0.2, 0.5, 1.0: entries with mass <= 0.2 go
    assert torch.isinf(out).view(-1).tolist() == [False, False, True, True]
    out = filter_top_k_top_p_(torch.tensor([[[0.0, 10.0]]]), top_k=0, top_p=1e-6)
    assert torch.isinf(out).view(-1).tolist() == [True, False]


def test_cfg_mix_and_ramp():
    logits = torch.tensor([[[1.0]], [[3.0]]])
    assert cfg_mix(logits, 1, 0.0).item() == 1.0
    assert cfg_mix(logits, 1, 2.0).item() == 3 * 1.0 - 2 * 3.0
    assert cfg_mix(logits[:1], 1, 2.0).item() == 1.0  # conditional-only rows pass through
    assert SamplingConfig(cfg=4).guidance(0.5) == 2.0


@pytest.mark.parametrize("kwargs", [{"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"cfg": -1.0}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_labels_validation():
    with pytest.raises(ValueError, match="unknown class id"):
        resolve_labels([3, 1001], None, 1000, None, torch.device("cpu"))
    assert resolve_labels([1000], None, 1000, None, torch.device("cpu")).tolist() == [1000]


def test_phi_map_of_ten_scales():
    assert phi_index_map(10) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def test_determinism_per_seed():
    engine = TorchEngine(tiny_var(2, patch_nums=(1, 2, 3, 4)), tiny_vqvae(patch_nums=(1, 2, 3, 4)))
    s = SamplingConfig(cfg=3, top_k=50, top_p=0.9)
    a = generate(engine, [1, 2], seed=7, sampling=s)
    b = generate(engine, [1, 2], seed=7, sampling=s)
    c = generate(engine, [1, 2], seed=8, sampling=s)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert torch.equal(a.images, b.images)
    assert any(not torch.equal(x, y) for x, y in zip(a.indices, c.indices))
    r = generate(engine, None, batch=3, seed=7, sampling=s)
    assert r.labels.shape == (3,) and r.images.shape == (3, 3, 8, 8)
    # the sampler's share is part of the scales' time (what `tools/bench_backends.py` breaks out)
    assert 0 < r.seconds["sampling"] < r.seconds["transformer"] <= r.seconds["total"]


# ------------------------------------------------------------------------------------------ knife edges
def kept(logits: torch.Tensor, sampling: SamplingConfig, t: float) -> torch.Tensor:
    mixed = cfg_mix(logits, 1, t)
    return torch.isfinite(filter_top_k_top_p_(mixed, sampling.top_k, sampling.top_p))


@pytest.mark.parametrize("top_k, top_p", [(0, 0.8), (5, 1.0), (6, 0.9)])
def test_cut_gaps_say_how_far_a_cut_is_from_tipping(top_k, top_p):
    """A shift of every logit by less than the gap keeps the filters' choice; a cut whose gap is
    tiny tips under a shift of some gaps (what batch-position rounding does to a knife-edge draw;
    top-p's mass margin is a bound, a mass moves less than the logits that move it)."""
    from varrt.runtime.knife_edge import cut_gaps

    sampling = SamplingConfig(cfg=2.0, top_k=top_k, top_p=top_p)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 64, 32, generator=g) * 2
    t = 1.5
    gaps = cut_gaps(logits, sampling, t)
    assert gaps.shape == (64,) and bool((gaps > 0).all())
    base = kept(logits, sampling, t)
    for _ in range(20):  # shifts below each token's gap never change what is kept
        noise = (torch.rand(logits.shape, generator=g) * 2 - 1) * 0.49 * gaps[None, :, None]
        assert torch.equal(kept(logits + noise, sampling, t), base)
    # the narrowest token, nudged across its gap in its guided logits, tips
    pos = int(gaps.argmin())
    assert float(gaps[pos]) < 0.05
    tipped = False
    for sign in (-1.0, 1.0):
        for _ in range(200):
            noise = torch.zeros_like(logits)
            noise[:, pos] = (torch.rand(2, 32, generator=g) * 2 - 1) * 30 * float(gaps[pos])
            tipped |= not torch.equal(kept(logits + sign * noise, sampling, t)[0, pos], base[0, pos])
    assert tipped


def test_knife_edge_finds_the_narrowest_cut_of_a_generation(tiny_models):
    from varrt.engines.torch_engine import TorchEngine
    from varrt.runtime.knife_edge import ROW_ROUNDING, knife_edge
    from varrt.runtime.pipeline import Pipeline

    pipe = Pipeline(TorchEngine(*tiny_models))
    engine = pipe.engine
    gap, si, pos = knife_edge(pipe, 3, 7)
    assert pipe.engine is engine  # put back
    assert 0 <= si < pipe.num_scales and pos >= 0 and 0 < gap < float("inf")
    assert ROW_ROUNDING < 1e-3
