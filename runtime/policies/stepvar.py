"""StepVAR (structure-texture guided pruning), from its paper's abstract: its code is not public.

Stated by the paper (arXiv 2603.01757, abstract): training-free token pruning at the **later
scales** (they refine high-frequency texture and are spatially redundant), by two criteria — a
**lightweight high-pass filter** for local texture and **PCA** for global structure — and the
pruned positions are filled by **nearest-neighbour feature propagation** so that the next scale
sees a dense map. Everything else is our choice, each a knob (docs/policies.md lists them):

    score = alpha * texture + (1 - alpha) * structure        (each min-max normalised per sample)
    texture   = || high-pass(x) ||                            ``filter``: box (x - its 3x3 mean) or laplacian
    structure = || projection of (x - mean) on the top ``components`` principal components ||

The token features are the scale's input tokens — the accumulated latent down-sampled to the
scale's grid, the only features available before the scale runs [fixed]; PCA by 8 power
iterations on the channel covariance [fixed]; the pruned scales are the last len(keep), or
``start``..SN-1 [keep, start]; the positions not computed take the final state of the nearest
computed token [stated; ties to the earlier token: fixed].
"""

from __future__ import annotations

from torch import Tensor

from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options, late_budgets, late_keep
from varrt.runtime.selectors import HIGH_PASS_FILTERS, high_pass, normalise, principal_projection, top_tokens

OPTIONS = {
    "keep": "kept fractions of the pruned scales: the last ones, or one / each from start (default 0.5/0.5)",
    "start": "first pruned scale (default: SN - the number of keep fractions)",
    "alpha": "weight of texture against structure (default 0.5)",
    "components": "principal components for the structure score (default 4)",
    "filter": "high-pass filter for the texture score: box or laplacian (default box)",
}
DEFAULTS = {"keep": "0.5/0.5", "alpha": "0.5", "components": "4", "filter": "box"}


class StepVarPolicy(Policy):
    name = "stepvar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> StepVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        o = {**DEFAULTS, **opts}
        keep = late_keep(target.schedule, o, DEFAULTS["keep"], "stepvar")
        try:
            return cls(target, keep, float(o["alpha"]), int(o["components"]), o["filter"])
        except ValueError as e:
            raise PlanError(f"stepvar options {opts}: {e}") from None

    def __init__(
        self,
        target: PolicyTarget,
        keep: tuple[float, ...] = (0.5, 0.5),
        alpha: float = 0.5,
        components: int = 4,
        filter: str = "box",
    ) -> None:
        if not 0 <= alpha <= 1 or components < 1 or filter not in HIGH_PASS_FILTERS:
            raise PlanError(
                f"stepvar: alpha must be in [0, 1], components >= 1, filter one of {HIGH_PASS_FILTERS}; "
                f"got {alpha}, {components}, {filter}"
            )
        self.alpha, self.components, self.filter = alpha, components, filter
        sn = target.schedule.num_scales
        plan = late_budgets(
            target.schedule,
            keep,
            "nearest",
            name="stepvar",
            description=f"StepVAR: {filter} texture / {components}-component PCA structure (alpha {alpha}) top-k "
            f"of {'/'.join(map(str, keep))} at the last {len(keep)} scales, NN fill",
        )
        knobs = {"keep": list(keep), "start": sn - len(keep), "alpha": alpha, "components": components}
        super().__init__((plan,), {**knobs, "filter": filter})

    def scores(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        texture = normalise(high_pass(x, grid, self.filter))
        structure = normalise(principal_projection(x, self.components))
        return self.alpha * texture + (1 - self.alpha) * structure

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.schedule
        return top_tokens(self.scores(state.x.float(), sched.grids[si]), plan.tokens(si, sched))
