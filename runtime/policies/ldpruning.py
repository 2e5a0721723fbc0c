"""LD-Pruning ("where to refine, when to stop"), from its paper's abstract: its code is not public.

Stated by the paper (arXiv 2606.00310, abstract): one metric, the *latent discrepancy* — a token's
contribution measured by the change of the model's states during generation, guided by image
latent or pixel-space signals — drives two components: **decoding-free region selection** (where
to refine) and **adaptive skipping of the unconditional branch** (when to stop), because the
convergence of the discrepancy between the conditional and unconditional branches varies with the
prompt. Everything else is our choice, each a knob (docs/policies.md lists them with defaults):

Where to refine. Before a pruned scale runs, the latent discrepancy of every position is how much
the previous scale changed the accumulated latent there, ``|| f_hat(s-1) - f_hat(s-2) ||``
(``measure``: l2 or l1 over channels) area-averaged onto the scale's grid — no decoder. The budget
(``keep`` of the scales from ``start``) goes to the positions still being refined (largest
discrepancy); the others take the previous scale's final states, up-sampled (``restore=cache``) or
the nearest computed token's (``nearest``).

When to stop. After every scale from ``min_scale`` on, each sample's discrepancy between its
conditional and unconditional token distributions (``branch``: mean total variation or
Jensen-Shannon divergence) is compared with the previous scale's; once its relative change falls
below ``threshold`` the sample runs conditional-only for the rest of the generation, on the
pre-built CFG-off shapes (one plan per switch scale; a batch splits into groups). ``threshold=0``
never stops CFG (region selection only).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options, late_budgets, late_keep
from varrt.runtime.selectors import (
    BRANCH_MEASURES,
    LATENT_MEASURES,
    branch_discrepancy,
    latent_discrepancy,
    top_tokens,
)

OPTIONS = {
    "keep": "kept fractions of the pruned scales: the last ones, or one / each from start (default 0.5/0.5)",
    "start": "first pruned scale (default: SN - the number of keep fractions)",
    "measure": "latent discrepancy per position: l2 or l1 over channels (default l2)",
    "branch": "cond/uncond discrepancy: tv (total variation) or js (Jensen-Shannon) (default tv)",
    "threshold": "relative change of the branch discrepancy that stops CFG; 0: never stop (default 0.05)",
    "min_scale": "first scale after which CFG may stop (default SN // 2)",
    "restore": "positions outside the budget: cache (previous scale's states) or nearest (default cache)",
}
DEFAULTS = {"keep": "0.5/0.5", "measure": "l2", "branch": "tv", "threshold": "0.05", "restore": "cache"}


class LDPruningPolicy(Policy):
    name = "ld-pruning"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> LDPruningPolicy:
        check_options(cls.name, opts, OPTIONS)
        o = {**DEFAULTS, **opts}
        keep = late_keep(target.schedule, o, DEFAULTS["keep"], "ld-pruning")
        try:
            min_scale = int(o["min_scale"]) if "min_scale" in o else None
            threshold = float(o["threshold"])
        except ValueError as e:
            raise PlanError(f"ld-pruning options {opts}: {e}") from None
        return cls(target, keep, threshold, min_scale, o["measure"], o["branch"], o["restore"])

    def __init__(
        self,
        target: PolicyTarget,
        keep: tuple[float, ...] = (0.5, 0.5),
        threshold: float = 0.05,
        min_scale: int | None = None,
        measure: str = "l2",
        branch: str = "tv",
        restore: str = "cache",
    ) -> None:
        sched = target.schedule
        sn = sched.num_scales
        self.min_scale = sn // 2 if min_scale is None else min_scale
        if not 1 <= self.min_scale <= sn - 2:
            raise PlanError(f"ld-pruning: min_scale must be in 1..{sn - 2}, got {self.min_scale}")
        if threshold < 0:
            raise PlanError(f"ld-pruning: threshold must be >= 0 (0: CFG never stops), got {threshold}")
        if measure not in LATENT_MEASURES or branch not in BRANCH_MEASURES or restore not in ("cache", "nearest"):
            raise PlanError(
                f"ld-pruning: measure must be one of {LATENT_MEASURES}, branch one of {BRANCH_MEASURES}, restore "
                f"cache or nearest; got {measure}, {branch}, {restore}"
            )
        self.threshold, self.measure, self.branch = threshold, measure, branch
        stop = f"CFG stops per sample after scale {self.min_scale} ({branch}, threshold {threshold})"
        base = late_budgets(
            sched,
            keep,
            restore,
            name="ld-pruning",
            description=f"LD-Pruning: latent-discrepancy ({measure}) top-k of {'/'.join(map(str, keep))} at the "
            f"last {len(keep)} scales, {restore} restoration, " + (stop if threshold > 0 else "CFG never stops"),
        )
        plans = [base]
        for k in range(self.min_scale + 1, sn) if threshold > 0 else ():  # CFG off from scale k on
            scales = tuple(replace(s, cfg="cond") if si >= k else s for si, s in enumerate(base.scales))
            plans.append(replace(base, name=f"ld-pruning-cfgoff{k}", scales=scales))
        self.split_from = self.min_scale + 1 if threshold > 0 else None
        self._previous: Tensor | None = None
        knobs = {"keep": list(keep), "start": sn - len(keep), "measure": measure, "branch": branch}
        knobs.update(threshold=threshold, min_scale=self.min_scale, restore=restore)
        super().__init__(tuple(plans), knobs)

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.schedule
        scores = latent_discrepancy(state.f_hat, state.f_hat_prev, sched.grids[si], self.measure)
        return top_tokens(scores.to(state.x.device), plan.tokens(si, sched))

    def after_scale(self, state: ScaleState) -> Tensor | None:
        if self.threshold == 0:
            return None
        b = state.f_hat.shape[0]
        current = torch.zeros(b, dtype=torch.int64)
        disc = torch.full((b,), float("nan"))
        for g in state.groups:
            current[g.samples] = g.plan_idx
            if g.cfg_on and g.logits is not None:
                disc[g.samples] = branch_discrepancy(g.logits[: g.b], g.logits[g.b :], self.branch).float().cpu()
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
