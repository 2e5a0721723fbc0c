"""ToProVAR (entropy-aware token pruning), reconstructed: its code is not public.

Token dimension. At a probe scale the engine returns every token's attention entropy per block
(computed inside the graph from the attention probabilities: -sum p log p, averaged over heads; a
separate "probe" graph, so that the other graphs keep TensorRT's fused attention). From the cut-off
scale on, tokens with high entropy (diffuse attention) tend to be pruned: each late scale keeps the
tokens with the lowest entropy, read from the probe scale's map up-sampled (area) to its grid and
averaged over the blocks; the rest take the previous scale's states (cached restoration).

Scale dimension. The pruning tendency grows with the scale, phi(s) = s / (SN - 1): scale s >= D
prunes the fraction alpha_min + (alpha_max - alpha_min) phi(s) of its tokens (static budgets, the
top-k form of the paper's keep probability).

Layer dimension (skipping the blocks the entropy analysis marks redundant at late scales) is not
implemented: it needs layer-subset graphs or a per-block segment split; see the issue notes.

Choices (knobs in brackets): probe = the scale before the cut-off [probe]; cut-off D = SN - 2 (the
last two scales) [cutoff]; alpha_min 0.3, alpha_max 0.6 [alpha_min, alpha_max]; blocks weighted
equally (the paper's layer scores are not published).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from varrt.export.configs import VARConfig
from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, ScaleState, check_options
from varrt.runtime.selectors import keep_count, top_tokens

OPTIONS = {
    "cutoff": "first pruned scale D (default SN - 2)",
    "probe": "probe scale (default D - 1)",
    "alpha_min": "pruned fraction at phi = 0 (default 0.3)",
    "alpha_max": "at phi = 1 (default 0.6)",
}


class ToProVarPolicy(Policy):
    name = "toprovar"

    @classmethod
    def from_options(cls, cfg: VARConfig, opts: dict[str, str]) -> ToProVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            cutoff = int(opts["cutoff"]) if "cutoff" in opts else None
            probe = int(opts["probe"]) if "probe" in opts else None
            return cls(cfg, cutoff, probe, float(opts.get("alpha_min", 0.3)), float(opts.get("alpha_max", 0.6)))
        except ValueError as e:
            raise PlanError(f"toprovar options {opts}: {e}") from None

    def __init__(
        self,
        cfg: VARConfig,
        cutoff: int | None = None,
        probe: int | None = None,
        alpha_min: float = 0.3,
        alpha_max: float = 0.6,
    ) -> None:
        sched = cfg.schedule
        sn = sched.num_scales
        cutoff = sn - 2 if cutoff is None else cutoff
        probe = cutoff - 1 if probe is None else probe
        if not 0 <= probe < cutoff < sn:
            raise PlanError(f"toprovar: need 0 <= probe < cutoff < {sn}, got probe {probe}, cutoff {cutoff}")
        if not 0 <= alpha_min <= alpha_max < 1:
            raise PlanError(f"toprovar: need 0 <= alpha_min <= alpha_max < 1, got {alpha_min}, {alpha_max}")
        scales = []
        for si in range(sn):
            n = sched.tokens(si)
            if si < cutoff:
                scales.append(ScalePlan())
                continue
            keep = 1 - (alpha_min + (alpha_max - alpha_min) * sched.ratio(si))
            budget = keep_count(n, keep)
            scales.append(ScalePlan(budget=budget, restore="cache") if budget < n else ScalePlan())
        plan = Plan(
            "toprovar",
            tuple(scales),
            f"ToProVAR: entropy probe at scale {probe}, lowest-entropy tokens kept "
            f"from scale {cutoff} on (pruned fraction {alpha_min} + {alpha_max - alpha_min} phi(s))",
        )
        plan = replace(plan, probe_scale=probe)
        super().__init__((plan,), {"cutoff": cutoff, "probe": probe, "alpha_min": alpha_min, "alpha_max": alpha_max})

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.engine.var_config.schedule
        g = state.groups[0]
        b, side = state.x.shape[0], sched.patch_nums[si]
        ent = g.entropy[:b].mean(1)  # (b, n_probe): blocks weighted equally; conditional rows
        grid = ent.reshape(b, 1, g.entropy_side, g.entropy_side)
        up = torch.nn.functional.interpolate(grid, size=(side, side), mode="area").flatten(1)
        return top_tokens(-up, plan.tokens(si, sched))  # keep the lowest entropy
