"""Plans: the static part of an acceleration, scale by scale.

A plan says, for every scale: whether it runs, how many tokens the engine computes (the budget),
which CFG branches run, which blocks run, and how the tokens that are not computed are restored.
A plan fixes every engine shape, so ``varrt export`` / ``build`` produce exactly the graphs it needs
and nothing is compiled during generation. Plans are data: JSON or TOML files a user can write::

    name = "my-plan"
    [[scales]]          # one table per scale, in order (missing keys take the defaults)
    budget = 1
    ...

Run-time decisions (which tokens fill a budget, when a policy switches CFG off) belong to
policies; they may only choose among the shapes a plan set declares.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from varrt.export.configs import ScaleSchedule
from varrt.export.graphs import StepShape

CFG_MODES = ("both", "cond")
#: how a scale's tokens that the engine did not compute get their codes
RESTORE_RULES = ("none",)


class PlanError(ValueError):
    """A plan that cannot run: the message names the scale, the field and the fix."""


@dataclass(frozen=True)
class ScalePlan:
    run: bool = True
    budget: int | None = None  # tokens the engine computes; None = every token of the scale
    cfg: str = "both"  # "both": conditional and unconditional branch; "cond": conditional only
    layers: tuple[int, ...] | None = None  # blocks that run; None = all
    restore: str = "none"  # rule for tokens outside the budget

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.layers is not None:
            d["layers"] = list(self.layers)
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class Plan:
    name: str
    scales: tuple[ScalePlan, ...]
    description: str = field(default="", compare=False)

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def full(cls, schedule: ScaleSchedule) -> Plan:
        """Every scale, every token, both CFG branches: the official sampler."""
        return cls("full", tuple(ScalePlan() for _ in schedule.patch_nums), "the official sampler, unchanged")

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        unknown = set(d) - {"name", "scales", "description"}
        if unknown:
            raise PlanError(f"plan has unknown fields {sorted(unknown)}; allowed: name, description, scales")
        if "scales" not in d or not isinstance(d["scales"], list):
            raise PlanError("plan needs a list 'scales' with one entry per scale")
        scales = []
        for si, s in enumerate(d["scales"]):
            bad = set(s) - set(ScalePlan.__dataclass_fields__)
            if bad:
                raise PlanError(
                    f"scale {si}: unknown fields {sorted(bad)}; allowed: {list(ScalePlan.__dataclass_fields__)}"
                )
            s = dict(s)
            if s.get("layers") is not None:
                s["layers"] = tuple(s["layers"])
            scales.append(ScalePlan(**s))
        return cls(d.get("name", "custom"), tuple(scales), d.get("description", ""))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        if not p.exists():
            raise PlanError(f"plan file not found: {p}")
        try:
            data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise PlanError(f"{p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "scales": [s.to_dict() for s in self.scales],
        }

    def with_scale(self, si: int, **changes) -> Plan:
        scales = list(self.scales)
        scales[si] = replace(scales[si], **changes)
        return replace(self, scales=tuple(scales))

    # ---------------------------------------------------------------------------- validation
    def validate(self, schedule: ScaleSchedule, depth: int) -> Plan:
        if len(self.scales) != schedule.num_scales:
            raise PlanError(
                f"plan {self.name!r} has {len(self.scales)} scales, the model's schedule {schedule.patch_nums} has "
                f"{schedule.num_scales}"
            )
        if not self.scales[0].run:
            raise PlanError(f"plan {self.name!r}: scale 0 must run (it starts the generation)")
        cond_from = None
        for si, s in enumerate(self.scales):
            n = schedule.tokens(si)
            where = f"plan {self.name!r}, scale {si} ({schedule.patch_nums[si]}x{schedule.patch_nums[si]} = {n} tokens)"
            if s.cfg not in CFG_MODES:
                raise PlanError(f"{where}: cfg {s.cfg!r} is not one of {CFG_MODES}")
            if s.restore not in RESTORE_RULES:
                raise PlanError(f"{where}: unknown restoration rule {s.restore!r}; known: {RESTORE_RULES}")
            if s.budget is not None and not 1 <= s.budget <= n:
                raise PlanError(f"{where}: budget {s.budget} must be between 1 and {n}")
            if s.budget is not None and s.budget < n and s.restore == "none":
                raise PlanError(f"{where}: budget {s.budget} < {n} needs a restoration rule for the other tokens")
            if s.layers is not None and (
                not s.layers or list(s.layers) != sorted(set(s.layers)) or not all(0 <= i < depth for i in s.layers)
            ):
                raise PlanError(f"{where}: layers must be increasing block indices in [0, {depth}), got {s.layers}")
            if not s.run:
                continue
            if s.cfg == "cond" and cond_from is None:
                cond_from = si
            elif s.cfg == "both" and cond_from is not None:
                raise PlanError(
                    f"{where}: CFG is switched back on after scale {cond_from} ran conditional-only; the "
                    "unconditional KV of those scales was never computed, so once off it must stay off"
                )
        return self

    # ---------------------------------------------------------------------------- derived numbers
    def tokens(self, si: int, schedule: ScaleSchedule) -> int:
        s = self.scales[si]
        return schedule.tokens(si) if s.budget is None else s.budget

    def run_scales(self) -> list[int]:
        return [si for si, s in enumerate(self.scales) if s.run]

    def capacity(self, schedule: ScaleSchedule) -> int:
        """KV slots the plan fills: computed tokens contribute KV, pruned and skipped ones none."""
        return sum(self.tokens(si, schedule) for si in self.run_scales())

    def step_shape(self, si: int, schedule: ScaleSchedule, batch: int, capacity: int) -> StepShape:
        rows = 2 * batch if self.scales[si].cfg == "both" else batch
        return StepShape(rows=rows, tokens=self.tokens(si, schedule), capacity=capacity)


def kv_capacity(plans: Iterable[Plan], schedule: ScaleSchedule) -> int:
    """One KV buffer serves every plan of a set (a policy may pick among them per sample)."""
    return max(p.capacity(schedule) for p in plans)


def step_shapes(plans: Sequence[Plan], schedule: ScaleSchedule, batch: int) -> list[StepShape]:
    """Every distinct transformer shape a plan set needs, in first-use order."""
    cap = kv_capacity(plans, schedule)
    out: dict[StepShape, None] = {}
    for plan in plans:
        for si in plan.run_scales():
            out.setdefault(plan.step_shape(si, schedule, batch, cap))
    return list(out)


def plan_identity(spec: str) -> str | dict:
    """What an export depends on for a plan spec: the name, or a plan file's contents."""
    p = Path(spec)
    if p.suffix in (".json", ".toml") and p.exists():
        import hashlib

        return {"file_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    return spec


def resolve_plans(specs: Sequence[str], cfg) -> tuple[Plan, ...]:
    """Plan specs (``full`` or a plan file) -> validated plans for the model's schedule."""
    out = []
    for spec in specs:
        p = Path(spec)
        if p.suffix in (".json", ".toml"):
            plan = Plan.load(p)
        elif spec == "full":
            plan = Plan.full(cfg.schedule)
        else:
            raise PlanError(f"unknown plan {spec!r}: give 'full' or a plan file (.json / .toml)")
        out.append(plan.validate(cfg.schedule, cfg.depth))
    return tuple(out)
