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
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from varrt.export.configs import ScaleSchedule
from varrt.export.graphs import FastVarShape, StepShape
from varrt.export.infinity_config import InfinitySchedule

Schedule = ScaleSchedule | InfinitySchedule
CFG_MODES = ("both", "cond")
#: how the positions of a scale that the engine did not compute get their final hidden state:
#: none (every token computed), nearest (the nearest computed token's), cache (the previous scale's
#: states up-sampled), fastvar (per sub-block: the reference scale's residual deltas up-sampled)
RESTORE_RULES = ("none", "nearest", "cache", "fastvar")


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
    #: FastVAR plans: the blocks [first, last) that prune tokens, and the reference scale whose
    #: residual deltas restore the pruned tokens of later scales (every scale then runs the
    #: FastVAR graph)
    fastvar_blocks: tuple[int, int] | None = None
    fastvar_reference: int | None = None
    #: the scale whose graph also returns attention entropy (ToProVAR's probe)
    probe_scale: int | None = None

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def full(cls, schedule: Schedule) -> Plan:
        """Every scale, every token, both CFG branches: the official sampler."""
        return cls("full", tuple(ScalePlan() for _ in schedule.grids), "the official sampler, unchanged")

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        allowed = {"name", "scales", "description", "fastvar_blocks", "fastvar_reference", "probe_scale"}
        unknown = set(d) - allowed
        if unknown:
            raise PlanError(f"plan has unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
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
        blocks = d.get("fastvar_blocks")
        return cls(
            d.get("name", "custom"),
            tuple(scales),
            d.get("description", ""),
            tuple(blocks) if blocks is not None else None,
            d.get("fastvar_reference"),
            d.get("probe_scale"),
        )

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
        d = {"name": self.name, "description": self.description, "scales": [s.to_dict() for s in self.scales]}
        if self.fastvar_blocks is not None:
            d["fastvar_blocks"] = list(self.fastvar_blocks)
            d["fastvar_reference"] = self.fastvar_reference
        if self.probe_scale is not None:
            d["probe_scale"] = self.probe_scale
        return d

    def with_scale(self, si: int, **changes) -> Plan:
        scales = list(self.scales)
        scales[si] = replace(scales[si], **changes)
        return replace(self, scales=tuple(scales))

    # ---------------------------------------------------------------------------- validation
    def validate(self, schedule: Schedule, depth: int) -> Plan:
        if len(self.scales) != schedule.num_scales:
            raise PlanError(
                f"plan {self.name!r} has {len(self.scales)} scales, the schedule {list(schedule.grids)} has "
                f"{schedule.num_scales}"
            )
        if not self.scales[0].run:
            raise PlanError(f"plan {self.name!r}: scale 0 must run (it starts the generation)")
        cond_from = None
        for si, s in enumerate(self.scales):
            n = schedule.tokens(si)
            h, w = schedule.grids[si]
            where = f"plan {self.name!r}, scale {si} ({h}x{w} = {n} tokens)"
            if s.cfg not in CFG_MODES:
                raise PlanError(f"{where}: cfg {s.cfg!r} is not one of {CFG_MODES}")
            if s.restore not in RESTORE_RULES:
                raise PlanError(f"{where}: unknown restoration rule {s.restore!r}; known: {RESTORE_RULES}")
            if s.budget is not None and not 1 <= s.budget <= n:
                raise PlanError(f"{where}: budget {s.budget} must be between 1 and {n}")
            if s.budget is not None and s.budget < n and s.restore == "none":
                raise PlanError(f"{where}: budget {s.budget} < {n} needs a restoration rule for the other tokens")
            if (s.restore == "fastvar") != (self.fastvar_blocks is not None and s.budget is not None and s.budget < n):
                raise PlanError(
                    f"{where}: the 'fastvar' restoration goes with a FastVAR plan (fastvar_blocks set) and a budget "
                    "below the scale's tokens, and a pruned scale of a FastVAR plan must use it"
                )
            if s.restore == "cache" and (si == 0 or not self.scales[si - 1].run):
                raise PlanError(f"{where}: 'cache' restoration needs the previous scale to have run")
            if s.layers is not None and (
                not s.layers or list(s.layers) != sorted(set(s.layers)) or not all(0 <= i < depth for i in s.layers)
            ):
                raise PlanError(f"{where}: layers must be increasing block indices in [0, {depth}), got {s.layers}")
            if not s.run:
                continue
            if self.fastvar_blocks is not None and s.layers is not None:
                raise PlanError(f"{where}: a FastVAR plan runs every block (its pruning is per block, not a layer set)")
            if s.cfg == "cond" and cond_from is None:
                cond_from = si
            elif s.cfg == "both" and cond_from is not None:
                raise PlanError(
                    f"{where}: CFG is switched back on after scale {cond_from} ran conditional-only; the "
                    "unconditional KV of those scales was never computed, so once off it must stay off"
                )
        layer_sets = {s.layers for s in self.scales if s.run and s.layers is not None}
        if len(layer_sets) > 1:
            raise PlanError(
                f"plan {self.name!r}: scales use different layer sets {sorted(layer_sets)}; a plan has one "
                "layer-set graph (its blocks are compiled in), so every scale that skips blocks skips the same"
            )
        if self.probe_scale is not None and self.scales[self.probe_scale].layers is not None:
            raise PlanError(f"plan {self.name!r}: the probe scale {self.probe_scale} runs every block (no layer set)")
        self._validate_fastvar(schedule, depth)
        if self.probe_scale is not None and not (
            0 <= self.probe_scale < schedule.num_scales and self.scales[self.probe_scale].run
        ):
            raise PlanError(f"plan {self.name!r}: probe_scale {self.probe_scale} must be a scale that runs")
        if self.probe_scale is not None and self.fastvar_blocks is not None:
            raise PlanError(f"plan {self.name!r}: a FastVAR plan has no probe graph")
        return self

    def _validate_fastvar(self, schedule: Schedule, depth: int) -> None:
        if self.fastvar_blocks is None:
            return
        a, b = self.fastvar_blocks
        if not 0 <= a < b <= depth:
            raise PlanError(
                f"plan {self.name!r}: fastvar_blocks {self.fastvar_blocks} must satisfy 0 <= first < last <= {depth}"
            )
        pruned = [si for si, s in enumerate(self.scales) if s.restore == "fastvar" and s.run]
        ref = self.fastvar_reference
        if pruned and (
            ref is None
            or not 0 <= ref < pruned[0]
            or not self.scales[ref].run
            or self.tokens(ref, schedule) != schedule.tokens(ref)
        ):
            raise PlanError(
                f"plan {self.name!r}: fastvar_reference must be a fully computed scale before the first pruned "
                f"scale ({pruned[0]}), got {ref}"
            )

    # ---------------------------------------------------------------------------- derived numbers
    def tokens(self, si: int, schedule: Schedule) -> int:
        s = self.scales[si]
        return schedule.tokens(si) if s.budget is None else s.budget

    def run_scales(self) -> list[int]:
        return [si for si, s in enumerate(self.scales) if s.run]

    def slots(self, si: int, schedule: Schedule) -> int:
        """KV slots scale si takes: its computed tokens (a FastVAR scale reserves all of its tokens,
        because its unpruned blocks compute every one)."""
        return schedule.tokens(si) if self.fastvar_blocks is not None else self.tokens(si, schedule)

    def capacity(self, schedule: Schedule) -> int:
        """KV slots the plan fills: computed tokens contribute KV, pruned and skipped ones none."""
        return sum(self.slots(si, schedule) for si in self.run_scales())

    def rows(self, si: int, batch: int) -> int:
        return 2 * batch if self.scales[si].cfg == "both" else batch

    def step_shape(self, si: int, schedule: Schedule, batch: int, capacity: int) -> StepShape | FastVarShape:
        rows, n = self.rows(si, batch), schedule.tokens(si)
        ref = self.fastvar_reference
        if self.fastvar_blocks is not None and ref is not None and si >= ref:
            # from the reference scale on (it hands its deltas to the pruned scales); the dense scales
            # before it run the plain graph, which skips FastVAR's per-sub-block ranking
            keep = self.tokens(si, schedule)
            return FastVarShape(rows, n, keep, capacity, self.fastvar_blocks, returns_deltas=si == ref)
        layers = self.scales[si].layers
        return StepShape(rows, self.tokens(si, schedule), n, capacity, probe=si == self.probe_scale, layers=layers)


def kv_capacity(plans: Iterable[Plan], schedule: Schedule) -> int:
    """One KV buffer serves every plan of a set (a policy may pick among them per sample)."""
    return max(p.capacity(schedule) for p in plans)


def step_shapes(
    plans: Sequence[Plan],
    schedule: Schedule,
    batch: int,
    split_from: int | None = None,
    capacity: int | None = None,
    shape_of: Callable[[Plan, int, int, int], Hashable] | None = None,
) -> list:
    """Every distinct transformer shape a plan set needs, in first-use order.

    A policy that moves samples between plans during a generation (SkipVAR's per-sample strategy,
    LD-Pruning's per-sample CFG switch) runs each group of samples at its own size: from scale
    ``split_from`` on, every group size 1..batch gets its shapes too. ``shape_of(plan, si, batch,
    capacity)`` is the family's shape of one call (default: VAR's :meth:`Plan.step_shape`).
    """
    cap = capacity or kv_capacity(plans, schedule)
    shape_of = shape_of or (lambda plan, si, b, c: plan.step_shape(si, schedule, b, c))
    out: dict[Hashable, None] = {}
    for plan in plans:
        for si in plan.run_scales():
            sizes = range(1, batch + 1) if split_from is not None and si >= split_from else (batch,)
            for b in sizes:
                out.setdefault(shape_of(plan, si, b, cap))
    return list(out)


def spec_identity(spec: str) -> str | dict:
    """What an export depends on for a policy spec: the spec itself, or a plan file's contents."""
    p = Path(spec)
    if p.suffix in (".json", ".toml") and p.exists():
        import hashlib

        return {"file_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    return spec
