"""StageVAR (stage-aware acceleration), reconstructed: only its README and figures are public.

The early (semantic and structure) stages run untouched. In the late fidelity-refinement stage:

* one CFG branch: the **conditional** one. StageVAR's summaries say the text conditioning is
  dropped there (a null prompt); for a class-conditional VAR that would make the late scales
  ignore the class, while the conditional branch alone keeps the class texture the early stages
  committed to — and it is the zero-copy view of the KV cache (``kv[:B]``). Guidance is off.
* low-rank computation: a fixed number of representative tokens per scale, chosen by the
  column-sampling form of a seeded random projection (a random subset, reproducible from the seed
  and the scale); the other positions take the previous scale's cached final states, up-sampled
  (representative token restoration).

Choices (knobs in brackets): the late stage starts at the first scale whose side exceeds half of
the last side (VAR 256 px: 10x10, i.e. the last three scales; StageVAR's analysis puts structure
at half resolution) [stage]; ranks keep 60%, 50%, 40% of those scales [keep]; seed 0 [seed].
"""

from __future__ import annotations

from torch import Tensor

from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options, fractions, late_budgets
from varrt.runtime.selectors import seeded_subset

OPTIONS = {
    "stage": "first scale of the late stage (default: first side > last side / 2)",
    "keep": "fractions kept at the late scales, slash-separated (default 0.6/0.5/0.4)",
    "seed": "seed of the random projection (default 0)",
}


class StageVarPolicy(Policy):
    name = "stagevar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> StageVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            stage = int(opts["stage"]) if "stage" in opts else None
            keep = fractions(opts["keep"], "stagevar keep") if "keep" in opts else None
            return cls(target, stage, keep, int(opts.get("seed", 0)))
        except ValueError as e:
            raise PlanError(f"stagevar options {opts}: {e}") from None

    def __init__(
        self, target: PolicyTarget, stage: int | None = None, keep: tuple[float, ...] | None = None, seed: int = 0
    ) -> None:
        sched = target.schedule
        sn = sched.num_scales
        if stage is None:
            last_h = sched.grids[-1][0]
            stage = next(si for si, (h, _) in enumerate(sched.grids) if h > last_h / 2)
        if not 1 <= stage < sn:
            raise PlanError(f"stagevar: the late stage must start at a scale in 1..{sn - 1}, got {stage}")
        n_late = sn - stage
        if keep is None:
            keep = (0.6, 0.5, 0.4)[-n_late:] if n_late <= 3 else (0.5,) * n_late
        if len(keep) != n_late:
            raise PlanError(f"stagevar: keep needs one fraction per late scale ({sn - stage}), got {keep}")
        self.seed = seed
        plan = late_budgets(
            sched,
            keep,
            "cache",
            cond_from=stage,
            name="stagevar",
            description=f"StageVAR: from scale {stage} conditional-only, random-projection ranks "
            f"{'/'.join(map(str, keep))}, cached restoration",
        )
        super().__init__((plan,), {"stage": stage, "keep": list(keep), "seed": seed})

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.schedule
        return seeded_subset(state.x.shape[0], sched.tokens(si), plan.tokens(si, sched), self.seed, si)
