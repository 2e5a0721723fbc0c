"""How confident a model is, scale by scale, at given sampling settings.

Fidelity figures (SSIM of a policy against the full plan) only separate careful policies from
careless ones when the model's late scales are confident: if the sampled token was one of many
near-equal choices, any change upstream redraws it and SSIM falls for every policy alike. Per
scale this measures, on the full plan:

* ``p_sampled``: the mean probability of the token that was drawn, under the distribution it was
  drawn from (CFG-mixed, then top-k / top-p filtered and renormalised);
* ``entropy``: the mean entropy (nats) of the CFG-mixed distribution before the filters, the
  model's own uncertainty at that guidance (log V for a uniform one);
* ``entropy_sampled``: the same after the filters (0 when the filters leave a single token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from varrt.engines.base import Engine
from varrt.runtime.generate import generate
from varrt.runtime.plan import Plan
from varrt.runtime.policies import ScaleState, StaticPolicy
from varrt.runtime.sampling import SamplingConfig, cfg_mix, filter_top_k_top_p_


def entropy_of(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) along the last axis; -inf logits add nothing."""
    logp = logits.log_softmax(dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


class ConfidenceRecorder(StaticPolicy):
    """The full plan; after each scale it keeps the distributions the tokens were drawn from."""

    def __init__(self, plan: Plan, sampling: SamplingConfig) -> None:
        super().__init__(plan)
        self.sampling = sampling
        self.log_probs: list[Tensor] = []  # per scale (B, n, V): the filtered distribution, log
        self.entropy: list[Tensor] = []  # per scale (B, n): before the filters

    def after_scale(self, state: ScaleState) -> None:
        (group,) = state.groups
        b = group.b
        mixed = cfg_mix(group.logits.float(), b, self.sampling.guidance(state.schedule.progress(state.si))).clone()
        self.entropy.append(entropy_of(mixed).cpu())
        filtered = filter_top_k_top_p_(mixed, self.sampling.top_k, self.sampling.top_p)
        self.log_probs.append(filtered.log_softmax(dim=-1).cpu())
        return None


def scale_confidence(
    engine: Engine, labels: Sequence[int], seeds: Sequence[int], sampling: SamplingConfig
) -> list[dict]:
    """Per scale: side, p_sampled, entropy, entropy_sampled (means over samples and positions)."""
    sched = engine.var_config.schedule
    sums = torch.zeros(sched.num_scales, 3, dtype=torch.float64)
    counts = torch.zeros(sched.num_scales, dtype=torch.float64)
    for seed in seeds:
        recorder = ConfidenceRecorder(Plan.full(sched), sampling)
        result = generate(engine, list(labels), seed=seed, sampling=sampling, policy=recorder)
        for si, (logp, ent) in enumerate(zip(recorder.log_probs, recorder.entropy)):
            drawn = logp.gather(-1, result.indices[si].unsqueeze(-1)).squeeze(-1)
            sums[si, 0] += drawn.exp().double().sum()
            sums[si, 1] += ent.double().sum()
            sums[si, 2] += entropy_of(logp).double().sum()
            counts[si] += ent.numel()
    means = sums / counts.unsqueeze(1)
    return [
        {
            "scale": si,
            "side": pn,
            "p_sampled": round(float(means[si, 0]), 4),
            "entropy": round(float(means[si, 1]), 4),
            "entropy_sampled": round(float(means[si, 2]), 4),
        }
        for si, pn in enumerate(sched.patch_nums)
    ]
