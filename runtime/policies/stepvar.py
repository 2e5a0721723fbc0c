"""StepVAR (structure-texture guided pruning), reconstructed: its code is not public.

At the late scales each sample keeps the tokens with the highest combined score

    score = alpha * texture + (1 - alpha) * structure        (each min-max normalised per sample)
    texture   = || x - blur3x3(x) ||                          a light high-pass over the token map
    structure = || projection of (x - mean) on the top principal components ||

and the positions not computed take the final state of the nearest computed token
(nearest-neighbour feature propagation), so the next scale sees a dense map.

Choices where the paper is silent (knobs in brackets): the token features are the scale's input
tokens — the accumulated latent down-sampled to the scale's grid, the only features available
before the scale runs [fixed]; PCA by 8 power iterations on the channel covariance, 1 component
[components]; alpha = 0.5 [alpha]; budgets keep 50% of the last two scales [keep] (the paper's
secondary summaries put the quality cliff beyond ~70% pruning).
"""

from __future__ import annotations

from torch import Tensor

from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options, fractions, late_budgets
from varrt.runtime.selectors import high_pass, normalise, principal_projection, top_tokens

OPTIONS = {
    "keep": "fractions kept at the last scales, slash-separated (default 0.5/0.5)",
    "alpha": "weight of texture against structure (default 0.5)",
    "components": "principal components for the structure score (default 1)",
}


class StepVarPolicy(Policy):
    name = "stepvar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> StepVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            return cls(
                target,
                fractions(opts.get("keep", "0.5/0.5"), "stepvar keep"),
                float(opts.get("alpha", 0.5)),
                int(opts.get("components", 1)),
            )
        except ValueError as e:
            raise PlanError(f"stepvar options {opts}: {e}") from None

    def __init__(
        self, target: PolicyTarget, keep: tuple[float, ...] = (0.5, 0.5), alpha: float = 0.5, components: int = 1
    ) -> None:
        if not 0 <= alpha <= 1 or components < 1:
            raise PlanError(f"stepvar: alpha must be in [0, 1] and components >= 1, got {alpha}, {components}")
        self.alpha, self.components = alpha, components
        plan = late_budgets(
            target.schedule,
            keep,
            "nearest",
            name="stepvar",
            description=f"StepVAR: texture/structure top-k of {'/'.join(map(str, keep))}, NN fill",
        )
        super().__init__((plan,), {"keep": list(keep), "alpha": alpha, "components": components})

    def scores(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        texture = normalise(high_pass(x, grid))
        structure = normalise(principal_projection(x, self.components))
        return self.alpha * texture + (1 - self.alpha) * structure

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.schedule
        return top_tokens(self.scores(state.x.float(), sched.grids[si]), plan.tokens(si, sched))
