"""The generation loop: scale by scale, on any engine, following a policy.

    cond = conditioner(labels ++ null labels)                 once
    for each scale si:
        for each group of samples (one plan per group):
            logits, new_kv = transformer(x_si, positions, cond, kv, kv_bias, ...)
            kv[slots] <- new_kv                                fixed buffer, fixed addresses
            idx = sample( (1 + t) cond_logits - t uncond_logits )   t = cfg * si / (SN - 1)
            f_hat += Phi(upsample(codebook[idx]))
        x_{si+1} = area_down(f_hat);  the policy may move samples to other plans
    image = decoder(f_hat)

Sampling, CFG mixing, token selection, restoration and the f_hat accumulation are this module's,
shared by every backend; the engine only runs static graphs. The KV cache of a group is laid out
(rows, depth, 2, heads, T, head_dim) with the conditional rows first, so switching CFG off keeps
``kv[:b]`` (conditional branch) or ``kv[b:2b]`` (unconditional branch): a contiguous view, no
copy; a call reads the cache's live prefix (``kv_bias`` covers it) from the buffer in place.
With one branch the logits are sampled as they are (no guidance mix): the null-class logits alone
for ``uncond``, as HART — whose guidance is VAR's (1 + t) L_c - t L_u — samples StageVAR's cfg-0
scales. Samples that a policy sends to different plans are split into groups once, at the scale of
the decision (:mod:`varrt.runtime.groups`: their cache rows are copied then, never again; on a
compiled backend a group runs at a bucketed size). StageVAR's low-rank scales take the random
draws the runtime makes from the request seed (:mod:`varrt.runtime.lowrank`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from varrt.engines.base import Engine
from varrt.export.graphs import (
    FastVarShape,
    GraphSpec,
    ToProVarShape,
    conditioner_spec,
    decoder_spec,
    step_spec,
)
from varrt.export.stagevar import StageVarShape
from varrt.export.vqvae import area_down
from varrt.runtime.groups import Group, KVBuffers, group_width, regroup
from varrt.runtime.lowrank import lowrank_result, stagevar_feeds
from varrt.runtime.plan import Plan, PlanError, kv_capacity
from varrt.runtime.policies import Policy, ScaleState, StaticPolicy
from varrt.runtime.sampling import Generators, SamplingConfig, generators_of, make_generators, per_sample, sample_scale
from varrt.runtime.selectors import nearest_fill, upsample_tokens

ScaleCallback = Callable[[int, int, float], None]


@dataclass
class Generation:
    images: Tensor  # (B, 3, H, W) in [0, 1], on the CPU
    indices: list[Tensor | None]  # per scale (B, pn*pn), -1 for samples that skipped the scale; None: nobody ran
    f_hat: Tensor
    labels: Tensor
    plans: list[str]  # the plan each sample finished on
    decisions: list[dict] = field(default_factory=list)  # what the policy decided, scale by scale
    #: condition, transformer (the scales, all of it), sampling (the part of the scales spent
    #: sampling tokens, accumulating f_hat and down-sampling the next input: work that no token
    #: budget reduces), decode, total
    seconds: dict[str, float] = field(default_factory=dict)
    scale_seconds: list[float] = field(default_factory=list)
    #: per scale, (plan, samples, width) of every group that ran: width > samples where a split
    #: group ran padded to a bucketed size (its padding rows' results dropped)
    groups: list[list[tuple[str, int, int]]] = field(default_factory=list)


def resolve_labels(
    labels: Sequence[int] | Tensor | None,
    batch: int | None,
    num_classes: int,
    rng: Generators,
    device: torch.device,
) -> Tensor:
    """Class ids as a (B,) int64 tensor. ``num_classes`` itself is the null (unconditional) class;
    no labels draws B uniformly at random from the generator, as the official sampler does (per-sample
    generators: each sample's label from its own)."""
    if labels is None:
        if per_sample(rng):
            batch = len(rng)
        if not batch:
            raise ValueError("give class labels or a batch size for random labels")
        uniform = torch.full((1, num_classes), 1.0 / num_classes, device=device)
        if per_sample(rng):
            return torch.cat([torch.multinomial(uniform, 1, replacement=True, generator=g).reshape(1) for g in rng])
        return torch.multinomial(uniform, num_samples=batch, replacement=True, generator=rng).reshape(batch)
    t = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("no class labels given")
    bad = [int(v) for v in t if not 0 <= int(v) <= num_classes]
    if bad:
        raise ValueError(
            f"unknown class id(s) {bad}: valid ids are 0..{num_classes - 1}, and {num_classes} is the null "
            "(unconditional) class"
        )
    return t.to(device)


@functools.lru_cache(maxsize=64)
def dense_fill(rows: int, b: int, n: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """fill_idx, fill_mask, restore of a scale whose every token runs: each position is itself
    (cached: the same read-only feeds every generation, no allocation per scale)."""
    local = torch.arange(n, device=device).expand(b, n)
    return local, torch.ones(b, n, device=device), torch.zeros(rows, n, width, device=device)


def fastvar_deltas(g: Group, plan: Plan, si: int, grids: Sequence[tuple[int, int]], graph: GraphSpec) -> Tensor:
    """The deltas ``graph`` (a FastVAR call) restores pruned tokens from: the reference scale's,
    up-sampled to scale si; zeros where nothing is pruned (the reference scale itself, once per
    generation, so they are not kept)."""
    if plan.scales[si].restore != "fastvar":
        return torch.zeros(graph.input("deltas").shape, device=g.kv.device)
    return g.pad_rows(upsample_tokens(g.deltas, grids[plan.fastvar_reference], grids[si]))


def select_budget(policy: Policy, plan: Plan, si: int, g: Group, state: ScaleState) -> Tensor:
    """The (b, n) tokens the policy picks for scale si's budget, checked against the plan."""
    local = policy.select(si, plan, state).to(g.kv.device)
    n = plan.tokens(si, state.schedule)
    if local.shape != (g.b, n):
        raise PlanError(
            f"policy {policy.name!r} selected {tuple(local.shape)} tokens at scale {si}, "
            f"the plan's budget is {(g.b, n)}"
        )
    return local


def restoration(rule: str, local: Tensor, g: Group, grids: Sequence[tuple[int, int]], si: int) -> tuple[Tensor, ...]:
    """fill_idx, fill_mask (b, N) and restore (R, N, C) of a scale where only ``local`` (b, n) run:
    ``nearest`` fills each position from the nearest computed token, ``cache`` keeps the computed
    tokens and takes the previous scale's final states (up-sampled) everywhere else."""
    (h, w), dev = grids[si], local.device
    (b, n), m = local.shape, h * w
    rows, width = g.hidden.shape[0], g.hidden.shape[-1]
    if rule == "nearest":
        return nearest_fill(local, (h, w)), torch.ones(b, m, device=dev), torch.zeros(rows, m, width, device=dev)
    order = torch.arange(n, device=dev).expand(b, n)
    fill = torch.zeros(b, m, dtype=torch.int64, device=dev).scatter(1, local, order)
    mask = torch.zeros(b, m, device=dev).scatter(1, local, 1.0)
    return fill, mask, upsample_tokens(g.hidden, grids[si - 1], (h, w))


class ScaleLoop:
    """One generation's state and its steps (kept together so that policies can look at it)."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        sampling: SamplingConfig,
        capacity: int | None,
        batch: int = 1,
        pad_groups: bool | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> None:
        self.engine, self.policy, self.sampling, self.seed = engine, policy, sampling, seed
        self.batch, self.pad_groups = batch, pad_groups
        self.cfg = engine.var_config
        self.sched = self.cfg.schedule
        self.plans = policy.plans
        self.capacity = capacity or kv_capacity(self.plans, self.sched)
        if self.capacity < kv_capacity(self.plans, self.sched):
            raise PlanError(f"KV capacity {self.capacity} is below what policy {policy.name!r} needs")
        self.latents: tuple[Tensor, Tensor] = (torch.zeros(0), torch.zeros(0))  # f_hat now, one scale earlier
        self.buffers = KVBuffers(engine)

    def new_group(self, cond: dict[str, Tensor], b: int) -> Group:
        cfg, dev = self.cfg, self.engine.device
        shape = self.plans[0].step_shape(0, self.sched, b, self.capacity)
        kv = self.buffers.take(step_spec(cfg, shape, self.engine.precision).input("kv"))
        bias = torch.full((cfg.depth, self.capacity), -torch.inf, device=dev)
        return Group(torch.arange(b), 0, kv, bias, cond)

    # ------------------------------------------------------------------------------- one group
    def run_group(self, g: Group, si: int, x_full: Tensor) -> Tensor:
        """Run scale si for group g: returns its logits (R, m, V) and updates its cache."""
        plan = self.plans[g.plan_idx]
        sp = plan.scales[si]
        if sp.cfg != "both" and g.cfg_on:
            g.keep_branch(sp.cfg)
        shape = plan.step_shape(si, self.sched, g.width, self.capacity)
        graph = step_spec(self.cfg, shape, self.engine.precision)
        live = g.live_prefix(shape.past)
        begin, _ = self.sched.begin_ends[si]
        pn, n_full = self.sched.patch_nums[si], self.sched.tokens(si)
        dev = self.engine.device
        common = {**g.cond, "kv": g.kv}
        if isinstance(shape, (FastVarShape, ToProVarShape)):  # the graph selects the tokens itself
            pos = torch.arange(begin, begin + n_full, device=dev).expand(shape.rows, n_full)
            feeds = {"x": g.rows(x_full), "pos_idx": pos, **common, "kv_bias": live, **shape.rank_feeds(dev)}
            if isinstance(shape, FastVarShape):
                feeds["deltas"] = fastvar_deltas(g, plan, si, self.sched.grids, graph)
            out = self.engine.run(graph, feeds)
            if si == plan.fastvar_reference:
                g.deltas = g.own(out["new_deltas"])
            g.append(out["new_kv"], n_full, shape.live(self.cfg.depth))
            return g.real_rows(out["logits"])
        if isinstance(shape, StageVarShape):
            pos = torch.arange(begin, begin + n_full, device=dev).expand(shape.rows, n_full)
            feeds = {"x": g.rows(x_full), "pos_idx": pos, **common, "kv_bias": live}
            out = self.engine.run(graph, {**feeds, **stagevar_feeds(g, shape, self.sched.grids, si, self.seed)})
            return lowrank_result(g, shape, out, self.cfg.depth)

        n = shape.tokens
        if n == n_full:
            fill, mask, restore = dense_fill(shape.rows, g.b, n_full, self.cfg.width, dev)
            x, local = x_full, fill  # every position computes itself
        else:
            f_now, f_before = self.latents
            sel = g.samples.to(f_now.device)
            state = ScaleState(
                si=si,
                samples=g.samples,
                x=x_full,
                plan=plan,
                engine=self.engine,
                schedule=self.sched,
                f_hat=f_now[sel],
                f_hat_prev=f_before[sel],
                groups=[g],
            )
            local = select_budget(self.policy, plan, si, g, state)
            x = torch.gather(x_full, 1, local.unsqueeze(-1).expand(-1, -1, x_full.shape[-1]))
            fill, mask, restore = restoration(sp.restore, local, g, self.sched.grids, si)
            restore = g.pad_rows(restore)
        feeds = {
            "x": g.rows(x),
            "pos_idx": g.rows(local + begin),
            **common,
            "kv_bias": live[0],
            "fill_idx": g.rows(fill),
            "fill_mask": g.rows(mask),
            "restore": restore,
        }
        out = self.engine.run(graph, feeds)
        g.append(out["new_kv"], n)
        g.hidden = g.own(out["hidden"])
        if "entropy" in out:
            g.entropy, g.entropy_grid = g.own(out["entropy"]), (pn, pn)
        if "chunk_hidden" in out:
            g.chunks = g.own(out["chunk_hidden"])
        return g.real_rows(out["logits"])

    # ------------------------------------------------------------------------------- regrouping
    def regroup(self, groups: list[Group], assign: Tensor, si: int) -> list[Group]:
        def spec_of(plan: Plan, s: int, size: int) -> GraphSpec:
            return step_spec(self.cfg, plan.step_shape(s, self.sched, size, self.capacity), self.engine.precision)

        width = group_width(self.engine, self.plans, si, self.batch, spec_of, self.pad_groups)
        return regroup(groups, assign, self.plans, si, self.policy.name, width, self.buffers)


@torch.inference_mode()
def generate(
    engine: Engine,
    labels: Sequence[int] | Tensor | None = None,
    *,
    batch: int | None = None,
    seed: int | Sequence[int] | None = 0,
    sampling: SamplingConfig | None = None,
    policy: Policy | None = None,
    plan: Plan | None = None,
    capacity: int | None = None,
    on_scale: ScaleCallback | None = None,
    pad_groups: bool | None = None,
) -> Generation:
    """Generate images for class ``labels`` on ``engine`` following ``policy`` (or one ``plan``;
    default: the full plan, the official sampler).

    ``seed``: an int seeds one generator for the batch (the official sampler's stream); a sequence
    gives every sample its own generator (``seed[i]`` for sample i), so that a sample's image does
    not depend on the rest of the batch; ``[s]`` for a batch of one is the same as ``s``.
    ``capacity`` is the KV capacity the engine's graphs were built for (the largest of the plan
    set they serve); by default, the policy's own. ``pad_groups``: whether groups split off by
    per-sample decisions run padded to a bucketed size (None: where the engine lacks their exact
    shape; see :mod:`varrt.runtime.groups`) — the images are the same either way.
    """
    cfg, dev = engine.var_config, engine.device
    sched = cfg.schedule
    sampling = sampling or SamplingConfig()
    if policy is None:
        policy = StaticPolicy(plan or Plan.full(sched))
    for p in policy.plans:
        p.validate(sched, cfg.depth)
    rng = make_generators(seed, dev)
    t_start = time.perf_counter()

    labels_b = resolve_labels(labels, batch, cfg.num_classes, rng, dev)
    b = labels_b.shape[0]
    if per_sample(rng) and len(rng) != b:
        raise ValueError(f"{len(rng)} seeds for {b} samples (give one seed, or one per sample)")
    capacity = capacity or getattr(engine, "kv_capacity", None)
    loop = ScaleLoop(engine, policy, sampling, capacity, b, pad_groups, seed)
    both = torch.cat((labels_b, torch.full_like(labels_b, cfg.null_class)))
    cond = engine.run(conditioner_spec(cfg, 2 * b), {"labels": both})
    cond = {k: v.clone() for k, v in cond.items()}  # engine outputs are valid until its next call
    t_cond = time.perf_counter()

    quant = engine.quantizer
    codebook = quant.embedding.weight
    f_hat = torch.zeros(b, cfg.latent_channels, sched.last, sched.last, device=codebook.device)
    x_next = torch.zeros(b, 1, cfg.latent_channels, device=dev)
    groups = [loop.new_group(cond, b)]
    indices: list[Tensor | None] = []
    scale_seconds: list[float] = []
    decisions: list[dict] = []
    group_log: list[list[tuple[str, int, int]]] = []

    f_prev = f_hat
    sampling_s = 0.0  # the per-token work every plan does, whatever its budget (see Generation.seconds)
    for si, pn in enumerate(sched.patch_nums):
        t0 = time.perf_counter()
        loop.latents = (f_hat, f_prev)
        f_prev = f_hat
        idx_all = torch.full((b, pn * pn), -1, dtype=torch.int64)
        ran = False
        group_log.append([])
        for g in groups:
            if not loop.plans[g.plan_idx].scales[si].run:
                continue
            ran = True
            group_log[-1].append((loop.plans[g.plan_idx].name, g.b, g.width))
            logits = loop.run_group(g, si, x_next[g.samples.to(dev)])
            t_sample = time.perf_counter()
            g.logits = logits.clone()
            group_rng = generators_of(rng, g.samples)
            idx, codes = sample_scale(logits, g.b, sched.progress(si), sampling, group_rng, codebook.to(dev))
            h = quant.codes_to_map(codes.to(codebook.device), pn)
            sel = g.samples.to(codebook.device)
            new_f, _ = quant.next_input(si, f_hat[sel], h)
            f_hat = f_hat.index_copy(0, sel, new_f)
            idx_all[g.samples] = idx.cpu()
            sampling_s += time.perf_counter() - t_sample
        indices.append(idx_all if ran else None)
        if si + 1 < sched.num_scales:
            t_sample = time.perf_counter()
            x_next = area_down(f_hat, sched.patch_nums[si + 1]).flatten(2).transpose(1, 2).to(dev)
            sampling_s += time.perf_counter() - t_sample
        assign = policy.after_scale(
            ScaleState(
                si=si,
                samples=torch.arange(b),
                x=x_next,
                plan=None,
                engine=engine,
                schedule=sched,
                f_hat=f_hat,
                f_hat_prev=f_prev,
                groups=groups,
            )
        )
        if assign is not None:
            decisions.append({"scale": si, "plans": [loop.plans[int(p)].name for p in assign]})
            groups = loop.regroup(groups, assign, si)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        scale_seconds.append(time.perf_counter() - t0)
        if on_scale:
            on_scale(si, sched.num_scales, scale_seconds[-1])

    t_dec = time.perf_counter()
    images = engine.run(decoder_spec(engine.vqvae_config, b), {"f_hat": f_hat.to(dev)})["image"].float().cpu()
    t_end = time.perf_counter()
    final = [""] * b
    for g in groups:
        for s in g.samples.tolist():
            final[s] = loop.plans[g.plan_idx].name
    return Generation(
        images=images,
        indices=indices,
        f_hat=f_hat.cpu(),
        labels=labels_b.cpu(),
        plans=final,
        decisions=decisions,
        seconds={
            "condition": t_cond - t_start,
            "transformer": sum(scale_seconds),
            "sampling": sampling_s,
            "decode": t_end - t_dec,
            "total": t_end - t_start,
        },
        scale_seconds=scale_seconds,
        groups=group_log,
    )
