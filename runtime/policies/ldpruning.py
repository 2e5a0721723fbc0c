"""LD-Pruning ("where to refine, when to stop"), reconstructed: its code is not public.

Where to refine — decoding-free region selection. Before a late scale runs, the latent
discrepancy of every position is how much the previous scale changed the accumulated latent
there: || f_hat(s-1) - f_hat(s-2) ||, area-averaged onto the scale's grid. The budget goes to the
positions still being refined (largest discrepancy); the others take the previous scale's final
states, up-sampled (cached restoration). No decoder, no attention maps.

When to stop — adaptive unconditional-branch skipping. After every scale from ``min_scale`` on,
each sample's discrepancy between its conditional and unconditional predictions (mean total
variation between the two token distributions) is compared with the previous scale's; once its
relative change falls below ``threshold`` the sample runs conditional-only for the rest of the
generation, on the pre-built CFG-off shapes (one plan per switch scale; a batch splits into groups).

Choices where the paper is silent (knobs in brackets): budgets keep 60% and 50% of the last two
scales [keep]; the switch is tested from the middle scale on [min_scale, default SN // 2];
threshold 0.1 [threshold].
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options, fractions, late_budgets
from varrt.runtime.selectors import branch_discrepancy, latent_discrepancy, top_tokens

OPTIONS = {
    "keep": "fractions kept at the last scales, slash-separated (default 0.6/0.5)",
    "threshold": "relative change of the branch discrepancy that stops CFG (default 0.1)",
    "min_scale": "first scale after which CFG may stop (default SN // 2)",
}


class LDPruningPolicy(Policy):
    name = "ld-pruning"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> LDPruningPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            keep = fractions(opts.get("keep", "0.6/0.5"), "ld-pruning keep")
            min_scale = int(opts["min_scale"]) if "min_scale" in opts else None
            return cls(target, keep, float(opts.get("threshold", 0.1)), min_scale)
        except ValueError as e:
            raise PlanError(f"ld-pruning options {opts}: {e}") from None

    def __init__(
        self,
        target: PolicyTarget,
        keep: tuple[float, ...] = (0.6, 0.5),
        threshold: float = 0.1,
        min_scale: int | None = None,
    ) -> None:
        sched = target.schedule
        sn = sched.num_scales
        self.min_scale = sn // 2 if min_scale is None else min_scale
        if not 1 <= self.min_scale <= sn - 2:
            raise PlanError(f"ld-pruning: min_scale must be in 1..{sn - 2}, got {self.min_scale}")
        if threshold <= 0:
            raise PlanError(f"ld-pruning: threshold must be > 0, got {threshold}")
        self.threshold = threshold
        base = late_budgets(
            sched,
            keep,
            "cache",
            name="ld-pruning",
            description=f"LD-Pruning: latent-discrepancy top-k of {'/'.join(map(str, keep))}, "
            f"CFG stops per sample after scale {self.min_scale} (threshold {threshold})",
        )
        plans = [base]
        for k in range(self.min_scale + 1, sn):  # CFG off from scale k on
            scales = tuple(replace(s, cfg="cond") if si >= k else s for si, s in enumerate(base.scales))
            plans.append(replace(base, name=f"ld-pruning-cfgoff{k}", scales=scales))
        self.split_from = self.min_scale + 1
        self._previous: Tensor | None = None
        super().__init__(tuple(plans), {"keep": list(keep), "threshold": threshold, "min_scale": self.min_scale})

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.schedule
        scores = latent_discrepancy(state.f_hat, state.f_hat_prev, sched.grids[si]).to(state.x.device)
        return top_tokens(scores, plan.tokens(si, sched))

    def after_scale(self, state: ScaleState) -> Tensor | None:
        b = state.f_hat.shape[0]
        current = torch.zeros(b, dtype=torch.int64)
        disc = torch.full((b,), float("nan"))
        for g in state.groups:
            current[g.samples] = g.plan_idx
            if g.cfg_on and g.logits is not None:
                disc[g.samples] = branch_discrepancy(g.logits[: g.b], g.logits[g.b :]).float().cpu()
        previous, self._previous = self._previous, disc
        if state.si == 0:
            previous = None
        if previous is None or state.si < self.min_scale or state.si >= len(self.plans) + self.min_scale - 1:
            return None
        converged = (disc - previous).abs() / previous.clamp_min(1e-12) < self.threshold
        switch = converged & (current == 0)
        if not switch.any():
            return None
        return torch.where(switch, state.si + 1 - self.min_scale, current)
