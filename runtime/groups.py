"""Groups of samples: the samples of a batch that run the same plan, with their KV cache rows.

A policy that decides per sample (SkipVAR's strategies, LD-Pruning's CFG switch) splits a batch
into groups at the scale of its decision; each group's cache rows are copied once then, never
again. A compiled backend runs only the shapes it was built for, and an export holds shapes for
the group sizes of :func:`~varrt.runtime.plan.group_sizes` (B, B // 2, ..., 1), not for every
size 1..B: a group of s samples then runs at the smallest of them that holds it, its buffer
padded with copies of its last sample. The padding rows compute duplicates whose results are
dropped: outputs leave the group as the real samples' rows only, so sampling and policies never
see them, and each real row is computed exactly as without padding.

Rows are laid out (conditional rows of the group's ``width`` samples, then their unconditional
rows), so switching CFG off keeps ``kv[:width]`` (the conditional branch) or ``kv[width:2 width]``
(the unconditional branch, StageVAR's cfg-0 scales): a contiguous view, no copy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from varrt.export.graphs import DTYPE_NAMES, TensorSpec
from varrt.runtime.plan import Plan, PlanError, group_bucket


@dataclass
class Group:
    """Samples that run the same plan; their cache rows live in one buffer (cond rows first)."""

    samples: Tensor  # (b,) sample ids, ascending
    plan_idx: int
    kv: Tensor  # (R, depth, 2, H, T, Dh): R = 2 width with CFG, width without
    kv_bias: Tensor  # (depth, T): 0 for live slots
    cond: dict[str, Tensor]  # sos / ada / head_ada for the R rows
    branch: str = "both"  # the CFG rows still run: "both", or the one kept, "cond" / "uncond"
    slot: int = 0
    # per-row results of the last call, for the real samples only (2b rows with CFG, b without):
    hidden: Tensor | None = None  # the last scale's dense final states (R, m, C), for 'cache' restoration
    logits: Tensor | None = None  # the last scale's engine logits (R, m, V), for policies that compare branches
    entropy: Tensor | None = None  # attention entropy of the probe scale (R, depth, n), and that scale's grid
    entropy_grid: tuple[int, int] = (0, 0)
    deltas: Tensor | None = None  # FastVAR: the reference scale's residual deltas (R, depth, 2, n, C)
    chunks: Tensor | None = None  # StageVAR: the last scale's output after every chunk of blocks (R, K, n, C)
    pad: int = 0  # padding samples after the real ones (copies of the last), in each CFG half

    @property
    def b(self) -> int:
        return self.samples.shape[0]

    @property
    def cfg_on(self) -> bool:
        return self.branch == "both"

    @property
    def width(self) -> int:
        """Samples the group's buffers and calls hold: its own, plus the padding."""
        return self.b + self.pad

    def rows(self, t: Tensor) -> Tensor:
        """Per-sample tensor (b, ...) -> per-row (R, ...): both CFG halves see the same values,
        the padding samples repeat the last one."""
        if self.pad:
            t = torch.cat((t, t[-1:].expand(self.pad, *t.shape[1:])))
        return torch.cat((t, t)) if self.cfg_on else t

    def pad_rows(self, t: Tensor) -> Tensor:
        """Per-row tensor of the real samples (2b or b, ...) -> the call's rows (R, ...)."""
        if not self.pad:
            return t
        halves = t.split(self.b) if self.cfg_on else (t,)
        return torch.cat([torch.cat((h, h[-1:].expand(self.pad, *h.shape[1:]))) for h in halves])

    def real_rows(self, t: Tensor) -> Tensor:
        """A call's per-row output (R, ...) -> the real samples' rows (2b or b, ...)."""
        if not self.pad:
            return t
        if self.cfg_on:
            return torch.cat((t[: self.b], t[self.width : self.width + self.b]))
        return t[: self.b]

    def own(self, t: Tensor) -> Tensor:
        """The real samples' rows of a call output, in a tensor of the group's own (engine outputs
        may be reused buffers)."""
        return self.real_rows(t) if self.pad else t.clone()

    def keep_branch(self, branch: str) -> None:
        """CFG off from now on: keep the ``cond`` half (rows :width) or the ``uncond`` half (rows
        width:2 width) of the call rows and the same half of every per-row result (views; nothing
        is copied)."""
        w, b = self.width, self.b
        rows, real = (slice(0, w), slice(0, b)) if branch == "cond" else (slice(w, 2 * w), slice(b, 2 * b))
        self.kv = self.kv[rows]
        self.cond = {k: v[rows] for k, v in self.cond.items()}
        for name in ("hidden", "deltas", "entropy", "chunks"):
            t = getattr(self, name)
            setattr(self, name, t[real] if t is not None else None)
        self.branch = branch

    def append(self, new_kv: Tensor, n: int, live: Sequence[int] | None = None) -> None:
        """Write a scale's keys and values into the next n slots and mark them live — per block only
        the first ``live[block]`` where the graph computed fewer tokens in the block (FastVAR's,
        ToProVAR's kept tokens' and StageVAR's low-rank chunks' keys come first)."""
        self.kv[:, :, :, :, self.slot : self.slot + n] = new_kv
        if live is None:
            self.kv_bias[:, self.slot : self.slot + n] = 0.0
        else:
            dev = self.kv_bias.device
            empty = torch.arange(n, device=dev) >= torch.tensor(live, device=dev)[:, None]
            self.kv_bias[:, self.slot : self.slot + n] = torch.where(empty, -torch.inf, 0.0)
        self.slot += n

    def live_prefix(self, past: int) -> Tensor:
        """The (depth, past) bias of the slots a call reads: the filled ones (the plan's static
        ``past`` must be where this group's cache has got to; the first scale reads one empty slot)."""
        if past != max(self.slot, 1):
            raise PlanError(f"the graph reads {past} cache slots, but this group has filled {self.slot}")
        return self.kv_bias[:, :past]

    def subset(self, local: Tensor, plan_idx: int, width: int | None = None, buffers: KVBuffers | None = None) -> Group:
        """A new group of some of these samples (their rows copied once, into one of ``buffers``),
        ``width`` samples wide (default: exactly them; more: padded with copies of the last)."""
        width = width or local.shape[0]
        if width < local.shape[0]:
            raise PlanError(f"a group of {local.shape[0]} samples cannot run {width} wide")
        held = torch.cat((local, local[-1:].expand(width - local.shape[0])))
        buffer_rows = torch.cat((held, held + self.width)) if self.cfg_on else held
        real = torch.cat((local, local + self.b)) if self.cfg_on else local

        def pick(t: Tensor | None, rows: Tensor) -> Tensor | None:
            return t.index_select(0, rows.to(t.device)) if t is not None else None

        if buffers is None or not buffers.persistent:
            kv = pick(self.kv, buffer_rows)
        else:
            spec = TensorSpec("kv", (buffer_rows.numel(), *self.kv.shape[1:]), DTYPE_NAMES[self.kv.dtype])
            kv = torch.index_select(self.kv, 0, buffer_rows.to(self.kv.device), out=buffers.take(spec))
        return Group(
            samples=self.samples[local],
            plan_idx=plan_idx,
            kv=kv,
            kv_bias=self.kv_bias.clone(),
            cond={k: pick(v, buffer_rows) for k, v in self.cond.items()},
            branch=self.branch,
            slot=self.slot,
            hidden=pick(self.hidden, real),
            logits=pick(self.logits, real),
            entropy=pick(self.entropy, real),
            entropy_grid=self.entropy_grid,
            deltas=pick(self.deltas, real),
            chunks=pick(self.chunks, real),
            pad=width - local.shape[0],
        )


class KVBuffers:
    """The KV buffers of one generation. Compiled engines hand out persistent ones
    (``engine.allocate(spec, index)``): the n-th buffer of a shape asked for in a generation is the
    same memory in every generation, so graphs captured on its address replay instead of piling
    up as groups split. Other engines get fresh zeros."""

    def __init__(self, engine) -> None:
        self.engine, self.count = engine, Counter()

    @property
    def persistent(self) -> bool:
        return getattr(self.engine, "allocate", None) is not None

    def take(self, spec: TensorSpec) -> Tensor:
        allocate = getattr(self.engine, "allocate", None)
        if allocate is None:
            return torch.zeros(spec.shape, dtype=spec.torch_dtype, device=self.engine.device)
        index = self.count[spec.shape]
        self.count[spec.shape] += 1
        return allocate(spec, index)


#: (plan index, group size) -> how many samples wide the group runs
Width = Callable[[int, int], int]


def regroup(
    groups: list[Group],
    assign: Tensor,
    plans: Sequence[Plan],
    si: int,
    policy: str,
    width: Width | None = None,
    buffers: KVBuffers | None = None,
) -> list[Group]:
    """Move samples to the plans ``assign`` (B,) gives them after scale si; split groups where
    they diverge (each new group's cache rows are copied once, ``width(plan, size)`` wide, into
    one of ``buffers``)."""
    out = []
    for g in groups:
        targets = assign[g.samples]
        for p in targets.unique().tolist():
            a, b = plans[g.plan_idx], plans[p]
            if a.scales[: si + 1] != b.scales[: si + 1]:
                raise PlanError(
                    f"policy {policy!r} moved samples from plan {a.name!r} to {b.name!r} after "
                    f"scale {si}, but the two plans differ before that point"
                )
        if (targets == targets[0]).all():
            g.plan_idx = int(targets[0])
            out.append(g)
            continue
        for p in targets.unique().tolist():
            local = (targets == p).nonzero().view(-1)
            out.append(g.subset(local, int(p), width(int(p), local.shape[0]) if width else None, buffers))
    return out


def group_width(
    engine, plans: Sequence[Plan], si: int, batch: int, spec_of: Callable[[Plan, int, int], object], pad: bool | None
) -> Width:
    """How wide a group split off after scale si runs: exactly its size where the engine runs that
    shape (eager torch runs any; an export with a shape per size 1..B), else the smallest size of
    :func:`~varrt.runtime.plan.group_sizes` that holds it (the shapes a bucketed export has).
    ``spec_of(plan, scale, size)`` is the family's graph of one call; ``pad`` True / False forces
    padding on / off (None: decide as above)."""

    def width(plan_idx: int, size: int) -> int:
        if pad is False or size == batch:
            return size
        if pad is None:
            plan = plans[plan_idx]
            later = [s for s in plan.run_scales() if s > si]
            if not later or engine.has_graph(spec_of(plan, later[0], size)):
                return size
        return group_bucket(size, batch)

    return width
