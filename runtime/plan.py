"""Plans: the static part of an acceleration, scale by scale.

A plan says, for every scale: whether it runs, how many tokens the engine computes (the budget),
which CFG branches run, which blocks run, and how the tokens that are not computed are restored;
a low-rank scale (StageVAR) computes each chunk of blocks on ``ranks[c]`` random mixtures of its
tokens instead of a budget.
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
from varrt.export.graphs import FastVarShape, StepShape, ToProVarShape
from varrt.export.infinity_config import InfinitySchedule
from varrt.export.stagevar import StageVarShape

Schedule = ScaleSchedule | InfinitySchedule
#: which CFG branches a scale runs: both, or one of them ("cond": the conditional rows, kv[:B];
#: "uncond": the unconditional rows, kv[B:2B]; both halves are contiguous views of the cache)
CFG_MODES = ("both", "cond", "uncond")
#: how the positions of a scale that the engine did not compute get their final hidden state:
#: none (every token computed), nearest (the nearest computed token's), cache (the previous scale's
#: states up-sampled), fastvar (per sub-block: the reference scale's residual deltas up-sampled),
#: stagevar (after every chunk of blocks: that chunk's previous-scale output up-sampled, overwritten
#: at the representative positions by the chunk's outputs; low-rank scales only)
RESTORE_RULES = ("none", "nearest", "cache", "fastvar", "stagevar")
#: TensorRT's TopK takes k <= 3840 (its operator reference); a low-rank scale draws its r
#: representative positions with one TopK per chunk
TOPK_MAX = 3840


class PlanError(ValueError):
    """A plan that cannot run: the message names the scale, the field and the fix."""


@dataclass(frozen=True)
class ScalePlan:
    run: bool = True
    budget: int | None = None  # tokens the engine computes; None = every token of the scale
    cfg: str = "both"  # "both": both branches; "cond" / "uncond": that branch only (CFG_MODES)
    layers: tuple[int, ...] | None = None  # blocks that run; None = all
    restore: str = "none"  # rule for tokens outside the budget
    #: ToProVAR plans: tokens each block computes (one per block; the blocks up to the plan's
    #: entropy block compute all of them, the later ones their lowest-entropy share, chosen in the graph)
    block_tokens: tuple[int, ...] | None = None
    #: a low-rank scale (StageVAR): per chunk of ``Plan.lowrank_chunk`` blocks, the number r of
    #: random token mixtures its blocks run on; None = an ordinary scale
    ranks: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("layers", "block_tokens", "ranks"):
            if d[key] is not None:
                d[key] = list(d[key])
        return {k: v for k, v in d.items() if v is not None}


#: the type each plan-file field of a scale must have (a plan file is data: no coercion)
SCALE_FIELD_TYPES = (
    ("run", bool, "true or false"),
    ("budget", int, "a whole number of tokens (leave it out for every token)"),
    ("cfg", str, f"one of {CFG_MODES}"),
    ("restore", str, f"one of {RESTORE_RULES}"),
)


def _is(value: object, kind: type) -> bool:
    """isinstance, except that booleans are not integers (JSON's true is not 1 token)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _check_type(value: object, kind: type, what: str, where: str, key: str) -> None:
    if not _is(value, kind):
        raise PlanError(f"{where}: {key!r} must be {what}, got {value!r} ({type(value).__name__})")


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
    #: the scale whose graph also returns attention entropy (an entropy probe, tools/toprovar_layers.py)
    probe_scale: int | None = None
    #: ToProVAR plans: the block whose attention entropy ranks the tokens of the later blocks, at
    #: every scale with ``block_tokens`` (they run the ToProVAR graph)
    toprovar_block: int | None = None
    #: plans with low-rank scales: blocks per chunk (the last chunk may be shorter); the scale
    #: before each low-rank scale also returns every chunk's output (what restores the next)
    lowrank_chunk: int | None = None

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def full(cls, schedule: Schedule) -> Plan:
        """Every scale, every token, both CFG branches: the official sampler."""
        return cls("full", tuple(ScalePlan() for _ in schedule.grids), "the official sampler, unchanged")

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if not isinstance(d, dict):
            raise PlanError(
                f"a plan is a table with a 'scales' list (one entry per scale), got a {type(d).__name__}; "
                "see docs/policies.md for the format"
            )
        allowed = {
            "name",
            "scales",
            "description",
            "fastvar_blocks",
            "fastvar_reference",
            "probe_scale",
            "toprovar_block",
            "lowrank_chunk",
        }
        unknown = set(d) - allowed
        if unknown:
            raise PlanError(f"plan has unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "scales" not in d or not isinstance(d["scales"], list):
            raise PlanError("plan needs a list 'scales' with one entry per scale")
        name = d.get("name", "custom")
        _check_type(name, str, "a string", f"plan {name!r}", "name")
        _check_type(d.get("description", ""), str, "a string", f"plan {name!r}", "description")
        for key, what in (
            ("fastvar_reference", "a scale index (an integer)"),
            ("probe_scale", "a scale index (an integer)"),
            ("toprovar_block", "a block index (an integer)"),
            ("lowrank_chunk", "a number of blocks per chunk (an integer)"),
        ):
            if d.get(key) is not None:
                _check_type(d[key], int, what, f"plan {name!r}", key)
        blocks = d.get("fastvar_blocks")
        if blocks is not None and not (
            isinstance(blocks, list | tuple) and len(blocks) == 2 and all(_is(b, int) for b in blocks)
        ):
            raise PlanError(f"plan {name!r}: 'fastvar_blocks' must be two block indices [first, last), got {blocks!r}")
        scales = []
        for si, s in enumerate(d["scales"]):
            where = f"plan {name!r}, scale {si}"
            if not isinstance(s, dict):
                raise PlanError(f"{where}: each scale is a table of fields, got {s!r}")
            bad = set(s) - set(ScalePlan.__dataclass_fields__)
            if bad:
                raise PlanError(
                    f"{where}: unknown fields {sorted(bad)}; allowed: {list(ScalePlan.__dataclass_fields__)}"
                )
            s = dict(s)
            for key, kind, what in SCALE_FIELD_TYPES:
                if s.get(key) is not None:
                    _check_type(s[key], kind, what, where, key)
            for key, what in (
                ("layers", "block indices"),
                ("block_tokens", "token counts, one per block"),
                ("ranks", "mixture counts, one per chunk"),
            ):
                if s.get(key) is not None:
                    if not isinstance(s[key], list | tuple) or not all(_is(i, int) for i in s[key]):
                        raise PlanError(f"{where}: {key!r} must be a list of {what}, got {s[key]!r}")
                    s[key] = tuple(s[key])
            scales.append(ScalePlan(**s))
        return cls(
            name,
            tuple(scales),
            d.get("description", ""),
            tuple(blocks) if blocks is not None else None,
            d.get("fastvar_reference"),
            d.get("probe_scale"),
            d.get("toprovar_block"),
            d.get("lowrank_chunk"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        if not p.exists():
            raise PlanError(f"plan file not found: {p}")
        try:
            data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError(f"{p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        d = {"name": self.name, "description": self.description, "scales": [s.to_dict() for s in self.scales]}
        if self.fastvar_blocks is not None:
            d["fastvar_blocks"] = list(self.fastvar_blocks)
            d["fastvar_reference"] = self.fastvar_reference
        if self.probe_scale is not None:
            d["probe_scale"] = self.probe_scale
        if self.toprovar_block is not None:
            d["toprovar_block"] = self.toprovar_block
        if self.lowrank_chunk is not None:
            d["lowrank_chunk"] = self.lowrank_chunk
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
        branch = None  # (the first scale that runs one branch, that branch)
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
            if s.cfg != "both" and branch is None:
                branch = (si, s.cfg)
            elif branch is not None and s.cfg != branch[1]:
                off, kept = branch
                if s.cfg == "both":
                    raise PlanError(
                        f"{where}: CFG is switched back on after scale {off} ran {kept}-only; the other branch's KV "
                        "of those scales was never computed, so once off it must stay off"
                    )
                raise PlanError(
                    f"{where}: runs the {s.cfg!r} branch, but scale {off} already kept only the {kept!r} one "
                    "(the other half of the cache is gone); one branch per plan once CFG is off"
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
        self._validate_toprovar(schedule, depth)
        self._validate_lowrank(schedule, depth)
        if self.probe_scale is not None and not (
            0 <= self.probe_scale < schedule.num_scales and self.scales[self.probe_scale].run
        ):
            raise PlanError(f"plan {self.name!r}: probe_scale {self.probe_scale} must be a scale that runs")
        if self.probe_scale is not None and self.fastvar_blocks is not None:
            raise PlanError(f"plan {self.name!r}: a FastVAR plan has no probe graph")
        return self

    def _validate_toprovar(self, schedule: Schedule, depth: int) -> None:
        e = self.toprovar_block
        pruned = [si for si, s in enumerate(self.scales) if s.block_tokens is not None]
        if e is None:
            if pruned:
                raise PlanError(f"plan {self.name!r}: scale {pruned[0]} has block_tokens but no toprovar_block")
            return
        if not 0 <= e < depth - 1:
            raise PlanError(f"plan {self.name!r}: toprovar_block {e} must leave a later block (0..{depth - 2})")
        if self.fastvar_blocks is not None or self.probe_scale is not None:
            raise PlanError(f"plan {self.name!r}: a ToProVAR plan has no FastVAR blocks and no probe scale")
        for si in pruned:
            s, n = self.scales[si], schedule.tokens(si)
            where = f"plan {self.name!r}, scale {si} ({n} tokens)"
            if len(s.block_tokens) != depth or not all(1 <= k <= n for k in s.block_tokens):
                raise PlanError(
                    f"{where}: block_tokens needs one count in 1..{n} per block ({depth}), got {s.block_tokens}"
                )
            if any(k != n for k in s.block_tokens[: e + 1]):
                raise PlanError(f"{where}: the blocks up to the entropy block {e} compute every token")
            if s.budget is not None or s.layers is not None or s.restore != "none":
                raise PlanError(f"{where}: a ToProVAR scale prunes in its graph (no budget, layer set or restoration)")

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

    def _validate_lowrank(self, schedule: Schedule, depth: int) -> None:
        lowrank = [si for si, s in enumerate(self.scales) if s.ranks is not None and s.run]
        for si, s in enumerate(self.scales):
            if (s.restore == "stagevar") != (s.ranks is not None):
                raise PlanError(
                    f"plan {self.name!r}, scale {si}: the 'stagevar' restoration goes with ranks (a low-rank scale), "
                    "and a low-rank scale must use it"
                )
        if not lowrank:
            if self.lowrank_chunk is not None:
                raise PlanError(f"plan {self.name!r}: lowrank_chunk is set but no scale that runs has ranks")
            return
        chunk = self.lowrank_chunk
        if chunk is None or not 1 <= chunk <= depth:
            raise PlanError(f"plan {self.name!r}: a plan with ranks needs lowrank_chunk in 1..{depth}, got {chunk}")
        chunks = -(-depth // chunk)
        if self.fastvar_blocks is not None or self.toprovar_block is not None:
            raise PlanError(f"plan {self.name!r}: a FastVAR or ToProVAR plan has no low-rank scales")
        for si in lowrank:
            s, n, prev = self.scales[si], schedule.tokens(si), self.scales[si - 1] if si else None
            where = f"plan {self.name!r}, low-rank scale {si} ({n} tokens)"
            if len(s.ranks) != chunks or not all(1 <= r <= min(n, TOPK_MAX) for r in s.ranks):
                raise PlanError(
                    f"{where}: ranks {list(s.ranks)} must be one r in 1..{min(n, TOPK_MAX)} per chunk of {chunk} "
                    f"blocks ({chunks} chunks; TensorRT's TopK takes k <= {TOPK_MAX})"
                )
            if s.budget is not None or s.layers is not None:
                raise PlanError(f"{where}: a low-rank scale has no budget and no layer set (its ranks replace them)")
            if prev is None or not prev.run or prev.budget is not None or prev.layers is not None:
                raise PlanError(
                    f"{where}: the previous scale must run every token in every block (its chunk outputs, "
                    "up-sampled, restore the positions the mixtures do not fill)"
                )
            if si - 1 == self.probe_scale or si == self.probe_scale:
                raise PlanError(f"{where}: neither it nor the scale before it can be the probe scale")
        later = [si for si, s in enumerate(self.scales) if s.run and si > lowrank[0] and s.ranks is None]
        if later:
            raise PlanError(
                f"plan {self.name!r}: scale {later[0]} runs after the low-rank scale {lowrank[0]} without ranks; the "
                "low-rank blocks cache a different number of keys each, which only a low-rank graph reads"
            )

    # ---------------------------------------------------------------------------- derived numbers
    def tokens(self, si: int, schedule: Schedule) -> int:
        s = self.scales[si]
        return schedule.tokens(si) if s.budget is None else s.budget

    def run_scales(self) -> list[int]:
        return [si for si, s in enumerate(self.scales) if s.run]

    def slots(self, si: int, schedule: Schedule) -> int:
        """KV slots scale si takes: its computed tokens (a FastVAR scale reserves all of its tokens,
        because its unpruned blocks compute every one; a low-rank scale reserves them when a later
        scale reads its keys — its chunk c fills the first ranks[c] slots — and none otherwise)."""
        if self.scales[si].ranks is not None:
            return schedule.tokens(si) if self.lowrank_feeds_later(si) else 0
        return schedule.tokens(si) if self.fastvar_blocks is not None else self.tokens(si, schedule)

    def lowrank_feeds_later(self, si: int) -> bool:
        """Whether a later scale runs after low-rank scale si (it then reads si's keys, values and
        chunk outputs; in StageVAR's published setting nothing runs after its 40x40 scale)."""
        return any(s.run for s in self.scales[si + 1 :])

    def chunk_reference(self, si: int) -> bool:
        """Whether scale si hands its chunk outputs to the low-rank scale after it."""
        nxt = self.scales[si + 1] if si + 1 < len(self.scales) else None
        return nxt is not None and nxt.run and nxt.ranks is not None

    def capacity(self, schedule: Schedule) -> int:
        """KV slots the plan fills: computed tokens contribute KV, pruned and skipped ones none."""
        return sum(self.slots(si, schedule) for si in self.run_scales())

    def past(self, si: int, schedule: Schedule) -> int:
        """The live prefix of the cache scale si reads: the slots of the scales before it that run
        (at least one: the first scale reads one empty, masked slot, so no graph input is empty)."""
        return max(1, sum(self.slots(j, schedule) for j in self.run_scales() if j < si))

    def rows(self, si: int, batch: int) -> int:
        return 2 * batch if self.scales[si].cfg == "both" else batch

    def step_shape(
        self, si: int, schedule: Schedule, batch: int, capacity: int
    ) -> StepShape | FastVarShape | ToProVarShape | StageVarShape:
        rows, n, past = self.rows(si, batch), schedule.tokens(si), self.past(si, schedule)
        ranks = self.scales[si].ranks
        if ranks is not None:
            feeds = self.lowrank_feeds_later(si)
            return StageVarShape(rows, n, ranks, capacity, self.lowrank_chunk, returns_state=feeds, past=past)
        block_tokens = self.scales[si].block_tokens
        if block_tokens is not None:
            e = self.toprovar_block
            return ToProVarShape(rows, n, block_tokens[e + 1 :], capacity, entropy_block=e, past=past)
        ref = self.fastvar_reference
        if self.fastvar_blocks is not None and ref is not None and si >= ref:
            # from the reference scale on (it hands its deltas to the pruned scales); the dense scales
            # before it run the plain graph, which skips FastVAR's per-sub-block ranking
            keep = self.tokens(si, schedule)
            return FastVarShape(rows, n, keep, capacity, self.fastvar_blocks, returns_deltas=si == ref, past=past)
        layers = self.scales[si].layers
        probe, chunk = si == self.probe_scale, self.lowrank_chunk if self.chunk_reference(si) else None
        return StepShape(
            rows, self.tokens(si, schedule), n, capacity, probe=probe, layers=layers, chunk=chunk, past=past
        )


def kv_capacity(plans: Iterable[Plan], schedule: Schedule) -> int:
    """One KV buffer serves every plan of a set (a policy may pick among them per sample)."""
    return max(p.capacity(schedule) for p in plans)


def group_sizes(batch: int) -> tuple[int, ...]:
    """The sizes a group of samples runs at once per-sample decisions have split a batch of
    ``batch``: the batch halved again and again (B, B // 2, B // 4, ..., 1), ascending. A group of
    s samples runs at the smallest of them that holds it, padded with copies of one of its samples
    whose results are dropped, so a batch-B export has floor(log2 B) + 1 shapes per scale instead
    of B, and no group computes twice its own rows (s > B // 2^(k+1) pads to at most B // 2^k)."""
    sizes, b = [], batch
    while b:
        sizes.append(b)
        b //= 2
    return tuple(reversed(sizes))


def group_bucket(size: int, batch: int) -> int:
    """The size a group of ``size`` samples (of a batch of ``batch``) runs at: see group_sizes."""
    if not 1 <= size <= batch:
        raise PlanError(f"a group of {size} samples does not fit a batch of {batch}")
    return next(b for b in group_sizes(batch) if b >= size)


def step_shapes(
    plans: Sequence[Plan],
    schedule: Schedule,
    batch: int,
    split_from: int | None = None,
    capacity: int | None = None,
    shape_of: Callable[[Plan, int, int, int], Hashable] | None = None,
    sizes: Sequence[int] | None = None,
) -> list:
    """Every distinct transformer shape a plan set needs, in first-use order.

    A policy that moves samples between plans during a generation (SkipVAR's per-sample strategy,
    LD-Pruning's per-sample CFG switch) runs each group of samples at its own size: from scale
    ``split_from`` on, every group size of :func:`group_sizes` gets its shapes too (``sizes``
    overrides them, e.g. ``range(1, batch + 1)`` for one shape per exact size). ``shape_of(plan,
    si, batch, capacity)`` is the family's shape of one call (default: VAR's :meth:`Plan.step_shape`).
    """
    cap = capacity or kv_capacity(plans, schedule)
    shape_of = shape_of or (lambda plan, si, b, c: plan.step_shape(si, schedule, b, c))
    split = tuple(sizes) if sizes is not None else group_sizes(batch)
    out: dict[Hashable, None] = {}
    for plan in plans:
        for si in plan.run_scales():
            for b in split if split_from is not None and si >= split_from else (batch,):
                out.setdefault(shape_of(plan, si, b, cap))
    return list(out)


def spec_identity(spec: str) -> str | dict:
    """What an export depends on for a policy spec: the spec itself, or a plan file's contents."""
    p = Path(spec)
    if p.suffix in (".json", ".toml") and p.exists():
        import hashlib

        return {"file_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    return spec


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n rows (a server's buckets: the exported ones of :func:`group_sizes`)."""
    fits = [b for b in buckets if b >= n]
    if n < 1 or not fits:
        raise ValueError(f"no bucket holds a batch of {n}: the buckets are {tuple(buckets)}")
    return min(fits)
