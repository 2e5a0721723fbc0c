"""Composition of two policies: ``A+B`` — the plans are merged scale by scale, not written per pair.

Merge rule, per scale: it runs if both run; it runs one CFG branch if either does (the same one); its budget is
the smaller one, and the policy that set that budget selects the tokens and names the restoration.
At most one of the two may make run-time decisions (SkipVAR's strategies, LD-Pruning's CFG
switch): the composed plans are that policy's plans, each merged with the other's (static) plan,
so its decisions keep their plan indices. FastVAR and ToProVAR do not compose (their pruning is
in their own graphs).
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from varrt.export.graphs import GraphSpec
from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState


def decides(p: Policy) -> bool:
    return type(p).after_scale is not Policy.after_scale


class ComposedPolicy(Policy):
    def __init__(self, a: Policy, b: Policy, target: PolicyTarget) -> None:
        if decides(a) and decides(b):
            raise PlanError(
                f"{a.name}+{b.name}: both make run-time decisions; compose one deciding policy with static ones"
            )
        in_graph = {
            "FastVAR": lambda p: p.fastvar_blocks is not None,
            "ToProVAR": lambda p: p.toprovar_block is not None,
            "StageVAR": lambda p: p.lowrank_chunk is not None,
        }
        for method, prunes_in_graph in in_graph.items():
            if any(prunes_in_graph(p) for p in (*a.plans, *b.plans)):
                raise PlanError(f"{a.name}+{b.name}: {method} prunes inside its own graph and does not compose")
        self.a, self.b = a, b
        self.decider = a if decides(a) else (b if decides(b) else None)
        self.name = f"{a.name}+{b.name}"
        sched = target.schedule
        if self.decider is b:
            plans = tuple(self._merge(a.plans[0], pb, sched) for pb in b.plans)
        else:
            plans = tuple(self._merge(pa, b.plans[0], sched) for pa in a.plans)
        base_a, base_b = a.plans[0], b.plans[0]
        self.owner = [
            a if base_a.tokens(si, sched) <= base_b.tokens(si, sched) else b for si in range(sched.num_scales)
        ]
        self.split_from = self.decider.split_from if self.decider else None
        super().__init__(plans, {"a": a.describe(), "b": b.describe()})

    def _merge(self, p: Plan, q: Plan, sched) -> Plan:
        scales = []
        for si, (s, t) in enumerate(zip(p.scales, q.scales)):
            small = s if p.tokens(si, sched) <= q.tokens(si, sched) else t
            scales.append(
                ScalePlan(
                    run=s.run and t.run,
                    budget=small.budget,
                    cfg=self._branch(si, s.cfg, t.cfg),
                    layers=small.layers,
                    restore=small.restore,
                )
            )
        names = p.name if p.name.startswith(self.name) else f"{p.name}+{q.name}"
        probe = p.probe_scale if p.probe_scale is not None else q.probe_scale
        return replace(
            p, name=names, scales=tuple(scales), probe_scale=probe, description=f"{p.name} merged with {q.name}"
        )

    def _branch(self, si: int, a: str, b: str) -> str:
        """One branch if either runs one; both policies must agree on which."""
        one = {a, b} - {"both"}
        if len(one) > 1:
            raise PlanError(
                f"{self.name}: scale {si} runs the conditional branch in one and the unconditional in the other"
            )
        return one.pop() if one else "both"

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        return self.owner[si].select(si, plan, state)

    def after_scale(self, state: ScaleState) -> Tensor | None:
        return self.decider.after_scale(state) if self.decider else None

    def extra_graphs(self, vcfg, batch: int, patchify: bool = False) -> list[GraphSpec]:
        return [*self.a.extra_graphs(vcfg, batch, patchify), *self.b.extra_graphs(vcfg, batch, patchify)]
