"""Policies: a plan family plus the run-time decisions that fill it.

A policy owns the plans it may run (``plans``: the static shapes to export and build), picks the
tokens of each budget (``select``), and may move samples to another of its plans after a scale
(``after_scale``). Decisions may only choose among the plans' shapes; nothing is compiled during
a generation. Policies are named on the command line as ``name[:key=value,...]``, e.g.
``skipvar:threshold=0.86``; a plan file (.json / .toml) is a policy without run-time decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from varrt.export.configs import VARConfig
from varrt.export.graphs import GraphSpec
from varrt.runtime.plan import Plan, PlanError, ScalePlan, Schedule
from varrt.runtime.selectors import distance_to_mean, keep_count, top_tokens


@dataclass(frozen=True)
class PolicyTarget:
    """What a policy is built for: the scale schedule (its ``grids``), the block count, the family
    (and the width, where a published rule reads it: StageVAR's ranks on VAR).

    VAR's schedule is fixed by the model; Infinity's by the aspect ratio of the request, so a
    policy is made per (model, schedule) rather than per model config.
    """

    schedule: Schedule
    depth: int
    family: str = "var"
    width: int | None = None

    @classmethod
    def of(cls, cfg: VARConfig | PolicyTarget) -> PolicyTarget:
        return cfg if isinstance(cfg, PolicyTarget) else cls(cfg.schedule, cfg.depth, width=cfg.width)


@dataclass
class ScaleState:
    """What a policy sees: at ``select`` the scale's input tokens of one group of samples, at
    ``after_scale`` the next scale's input tokens and the latent before/after the scale for all."""

    si: int
    samples: Tensor  # sample ids the tensors below are for
    x: Tensor  # (b, N, Cvae) the scale's input tokens (select) / the next scale's (after_scale)
    plan: Plan | None
    engine: object
    schedule: Schedule
    f_hat: Tensor | None = None  # after the scale (after_scale) / after the previous scale (select)
    f_hat_prev: Tensor | None = None  # the accumulated latent one scale earlier
    groups: list = field(default_factory=list)  # the generation's groups (their last logits, cache, ...)


class Policy:
    """Base: one static plan, tokens chosen by distance to the mean token (FastVAR's criterion)."""

    name = "policy"
    #: first scale from which samples may change plan; the bucketed group sizes get shapes from here on
    split_from: int | None = None

    def __init__(self, plans: tuple[Plan, ...], options: dict | None = None) -> None:
        if not plans:
            raise PlanError("a policy needs at least one plan")
        self.plans = plans
        self.options = options or {}

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        """(b, n) indices (within the scale, ascending) of the tokens to compute."""
        return top_tokens(distance_to_mean(state.x), plan.tokens(si, state.schedule))

    def after_scale(self, state: ScaleState) -> Tensor | None:
        """Per-sample plan indices (B,) to switch to, or None to keep every sample where it is."""
        return None

    def extra_graphs(self, vcfg, batch: int, patchify: bool = False) -> list[GraphSpec]:
        """Graphs the policy runs besides the plans' steps (e.g. SkipVAR's small decodes); ``vcfg``
        is the family's decoder config, ``patchify`` Infinity-8B's 2x2 token layout."""
        return []

    def describe(self) -> dict:
        return {"policy": self.name, "options": self.options, "plans": [p.name for p in self.plans]}


class StaticPolicy(Policy):
    """A fixed plan (``full`` or a plan file): no run-time decisions."""

    def __init__(self, plan: Plan) -> None:
        super().__init__((plan,), {})
        self.name = plan.name


def late_budgets(
    schedule: Schedule,
    keep: tuple[float, ...],
    restore: str,
    cond_from: int | None = None,
    name: str = "plan",
    description: str = "",
) -> Plan:
    """A plan that keeps the fraction ``keep[i]`` of the tokens of each of the last len(keep) scales
    (restoring the others by ``restore``) and runs conditional-only from scale ``cond_from`` on."""
    sn = schedule.num_scales
    if not keep or len(keep) >= sn or not all(0 < k <= 1 for k in keep):
        raise PlanError(f"{name}: keep {keep} must be one fraction in (0, 1] per late scale, fewer than {sn}")
    scales = []
    for si in range(sn):
        late = si - (sn - len(keep))
        n = schedule.tokens(si)
        budget = keep_count(n, keep[late]) if late >= 0 else None
        pruned = budget is not None and budget < n
        cfg = "cond" if cond_from is not None and si >= cond_from else "both"
        scales.append(ScalePlan(budget=budget if pruned else None, cfg=cfg, restore=restore if pruned else "none"))
    return Plan(name, tuple(scales), description)


def late_keep(schedule: Schedule, opts: dict[str, str], default: str, what: str) -> tuple[float, ...]:
    """The keep fractions of a policy's pruned scales, from its ``keep`` and ``start`` options:
    ``keep`` lists one fraction per pruned scale, the last ones of the schedule; with ``start`` the
    pruned scales are ``start``..SN-1 and ``keep`` gives one fraction for all of them or one each."""
    keep = fractions(opts.get("keep", default), f"{what} keep")
    if "start" not in opts:
        return keep
    sn = schedule.num_scales
    try:
        start = int(opts["start"])
    except ValueError:
        raise PlanError(f"{what}: start {opts['start']!r} is not a scale index") from None
    if not 1 <= start < sn:
        raise PlanError(f"{what}: start must be a scale in 1..{sn - 1}, got {start}")
    count = sn - start
    if len(keep) == 1:
        return keep * count
    if len(keep) != count:
        raise PlanError(
            f"{what}: keep has {len(keep)} fractions for the {count} scales from start {start}; give 1 or {count}"
        )
    return keep


def fractions(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise PlanError(f"{what}: {text!r} is not a slash-separated list of numbers") from None


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name:key=value,key=value`` -> (name, {key: value})."""
    name, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise PlanError(f"policy option {item!r} in {spec!r} is not key=value")
        opts[key.strip()] = value.strip()
    return name.strip(), opts


def check_options(name: str, opts: dict[str, str], allowed: dict[str, str]) -> None:
    unknown = set(opts) - set(allowed)
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in allowed.items()) or "none"
        raise PlanError(f"policy {name!r} has no option(s) {sorted(unknown)}; its options are — {known}")


def registry(family: str = "var") -> dict[str, type]:
    """Policy classes by name; SkipVAR's selector is per family (its decodes and fitted models)."""
    from varrt.runtime.policies.fastvar import FastVarPolicy
    from varrt.runtime.policies.ldpruning import LDPruningPolicy
    from varrt.runtime.policies.skipvar import SkipVarPolicy
    from varrt.runtime.policies.stagevar import StageVarPolicy
    from varrt.runtime.policies.stepvar import StepVarPolicy
    from varrt.runtime.policies.toprovar import ToProVarPolicy

    if family == "infinity":
        from varrt.runtime.policies.infinity import InfinitySkipVar as SkipVarPolicy
    return {
        "fastvar": FastVarPolicy,
        "skipvar": SkipVarPolicy,
        "ld-pruning": LDPruningPolicy,
        "stepvar": StepVarPolicy,
        "toprovar": ToProVarPolicy,
        "stagevar": StageVarPolicy,
    }


def make_policy(spec: str, cfg: VARConfig | PolicyTarget) -> Policy:
    """A policy by spec: ``full``, ``NAME[:key=value,...]``, ``A+B`` (composition), or a plan file;
    for a VAR model config, or for a :class:`PolicyTarget` (Infinity: the request's schedule)."""
    target = PolicyTarget.of(cfg)
    sched = target.schedule
    if "+" in spec:
        from varrt.runtime.policies.compose import ComposedPolicy

        parts = [make_policy(p, target) for p in spec.split("+")]
        policy = parts[0]
        for other in parts[1:]:
            policy = ComposedPolicy(policy, other, target)
        return policy
    known = registry(target.family)
    if Path(spec).suffix in (".json", ".toml"):
        return StaticPolicy(Plan.load(spec).validate(sched, target.depth))
    name, opts = parse_spec(spec)
    if name == "full":
        check_options(name, opts, {})
        return StaticPolicy(Plan.full(sched))
    if name not in known:
        raise PlanError(f"unknown policy {name!r}; known: full, {', '.join(known)}, A+B, or a plan file (.json/.toml)")
    policy = known[name].from_options(target, opts)
    if opts:  # reports and errors tell variants of one policy apart
        policy.name = f"{name}:" + ",".join(f"{k}={v}" for k, v in opts.items())
    for p in policy.plans:
        p.validate(sched, target.depth)
    return policy


def policy_names() -> list[str]:
    return ["full", *registry()]


__all__ = [
    "Policy",
    "PolicyTarget",
    "ScaleState",
    "StaticPolicy",
    "check_options",
    "fractions",
    "late_budgets",
    "late_keep",
    "make_policy",
    "parse_spec",
    "policy_names",
]
