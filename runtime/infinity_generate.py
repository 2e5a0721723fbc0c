"""Text-to-image generation with Infinity: scale by scale, on any engine, following a plan or policy.

    text = text_encoder(prompts [; negative prompts])               once (T5, at the prompt's bucket length)
    cond = conditioner(text, mask, uncond)                          once: pooled start token, AdaLN, text K/V
    for each scale si (grid h x w):
        for each group of samples (one plan per group):
            logits, new_kv = transformer(x_si, (level, row, col), cond, kv, kv_bias)
            kv[slots] <- new_kv
            bits = sample( cfg L_cond / tau + (1 - cfg) L_uncond / tau )   one 2-way draw per bit
            summed += up(codes(bits))
        x_{si+1} = down(summed);  the policy may move samples to other plans
    image = decoder(summed)

Like :mod:`varrt.runtime.generate` (VAR), sampling, CFG, token selection, restoration and the
code accumulation are the runtime's, shared by every backend; the KV cache keeps the conditional
rows first so that a one-branch scale reads ``kv[:B]`` (conditional) or ``kv[B:2B]``
(unconditional: StageVAR's cfg = 0, whose logits are then L_uncond / tau). Policies and plans are the VAR
ones (:mod:`varrt.runtime.policies`), built on the request's schedule: a plan says per scale
whether it runs (a skipped scale adds no codes), its CFG branches, its token budget and
restoration, its layer set; FastVAR plans run Infinity's FastVAR graph from the reference scale on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from varrt.engines.base import Engine
from varrt.export.graphs import FastVarShape, ToProVarShape
from varrt.export.infinity import scale_positions, text_bias
from varrt.export.infinity_config import InfinitySchedule
from varrt.export.infinity_graphs import (
    InfinityFastVarShape,
    InfinityStageVarShape,
    InfinityToProVarShape,
    TextStepShape,
    infinity_conditioner_spec,
    infinity_decoder_spec,
    infinity_step_spec,
    text_encoder_spec,
)
from varrt.export.stagevar import StageVarShape
from varrt.export.text_encoder import text_bucket
from varrt.runtime.bitwise import BitwiseSampling, accumulate, bits_to_codes, next_input, sample_bits, vae_grid
from varrt.runtime.generate import dense_fill, fastvar_deltas, restoration, select_budget
from varrt.runtime.groups import Group, KVBuffers, group_width, regroup
from varrt.runtime.lowrank import lowrank_result, stagevar_feeds
from varrt.runtime.plan import Plan, PlanError, kv_capacity
from varrt.runtime.policies import Policy, ScaleState, StaticPolicy
from varrt.runtime.sampling import generators_of, make_generators, per_sample

ScaleCallback = Callable[[int, int, float], None]


@dataclass
class TextGeneration:
    images: Tensor  # (B, 3, H, W) in [0, 1], on the CPU
    bits: list[Tensor | None]  # per scale (B, h w, d_vae) int8, -1 for samples that skipped it; None: nobody ran
    codes: Tensor  # (B, d_code, H, W) the summed codes the decoder read
    prompts: list[str]
    plans: list[str]
    decisions: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    scale_seconds: list[float] = field(default_factory=list)


def infinity_step_shape(
    plan: Plan, si: int, schedule: InfinitySchedule, batch: int, capacity: int, text: int
) -> TextStepShape | InfinityFastVarShape | InfinityToProVarShape | InfinityStageVarShape:
    """The static shape of one Infinity transformer call of ``plan`` at scale si: VAR's
    :meth:`~varrt.runtime.plan.Plan.step_shape` plus the text bucket."""
    shape = plan.step_shape(si, schedule, batch, capacity)
    if isinstance(shape, FastVarShape):
        return InfinityFastVarShape(**asdict(shape), text=text)
    if isinstance(shape, ToProVarShape):
        return InfinityToProVarShape(**asdict(shape), text=text)
    if isinstance(shape, StageVarShape):
        return InfinityStageVarShape(**asdict(shape), text=text)
    return TextStepShape(**asdict(shape), text=text)


class InfinityScaleLoop:
    """One generation's per-scale calls: the shape of each group's call, its feeds, its cache."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        schedule: InfinitySchedule,
        capacity: int,
        text: int,
        batch: int = 1,
        pad_groups: bool | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> None:
        self.engine, self.policy, self.sched = engine, policy, schedule
        self.capacity, self.text, self.seed = capacity, text, seed
        self.batch, self.pad_groups = batch, pad_groups
        self.latents: tuple[Tensor, Tensor] = (torch.zeros(0), torch.zeros(0))  # summed codes now, one scale earlier
        self.buffers = KVBuffers(engine)

    def run_group(self, g: Group, si: int, x_full: Tensor) -> Tensor:
        """Run scale si for group g (x_full (b, N, d_vae) its input tokens): logits (R, N, 2d)."""
        cfg, dev, sched = self.engine.config, self.engine.device, self.sched
        plan = self.policy.plans[g.plan_idx]
        sp = plan.scales[si]
        if sp.cfg != "both" and g.cfg_on:
            g.keep_branch(sp.cfg)
        shape = infinity_step_shape(plan, si, sched, g.width, self.capacity, self.text)
        graph = infinity_step_spec(cfg, shape, self.engine.precision)
        n_full = sched.tokens(si)
        pos_full = scale_positions(sched, si).to(dev)
        live = g.live_prefix(shape.past)
        if isinstance(shape, (InfinityFastVarShape, InfinityToProVarShape)):  # the graph selects the tokens
            feeds = {
                "x": g.rows(x_full),
                "pos": pos_full.expand(shape.rows, n_full, 3),
                **g.cond,
                "kv": g.kv,
                "kv_bias": live,
                **shape.rank_feeds(dev),
            }
            if isinstance(shape, InfinityFastVarShape):
                feeds["deltas"] = fastvar_deltas(g, plan, si, sched.grids, graph)
            out = self.engine.run(graph, feeds)
            if si == plan.fastvar_reference:
                g.deltas = g.own(out["new_deltas"])
            g.append(out["new_kv"], n_full, shape.live(cfg.depth))
            return g.real_rows(out["logits"])
        if isinstance(shape, InfinityStageVarShape):
            feeds = {"x": g.rows(x_full), "pos": pos_full.expand(shape.rows, n_full, 3), **g.cond, "kv": g.kv}
            feeds = {**feeds, "kv_bias": live, **stagevar_feeds(g, shape, sched.grids, si, self.seed)}
            return lowrank_result(g, shape, self.engine.run(graph, feeds), cfg.depth)
        if shape.tokens == n_full:
            fill, mask, restore = dense_fill(shape.rows, g.b, n_full, cfg.width, dev)
            x, pos = x_full, pos_full.expand(g.b, n_full, 3)
        else:
            now, before = self.latents
            sel = g.samples.to(now.device)
            state = ScaleState(si, g.samples, x_full, plan, self.engine, sched, now[sel], before[sel], [g])
            local = select_budget(self.policy, plan, si, g, state)
            x = torch.gather(x_full, 1, local.unsqueeze(-1).expand(-1, -1, x_full.shape[-1]))
            pos = pos_full[local]
            fill, mask, restore = restoration(sp.restore, local, g, sched.grids, si)
            restore = g.pad_rows(restore)
        feeds = {
            "x": g.rows(x),
            "pos": g.rows(pos),
            **g.cond,
            "kv": g.kv,
            "kv_bias": live[0],
            "fill_idx": g.rows(fill),
            "fill_mask": g.rows(mask),
            "restore": restore,
        }
        out = self.engine.run(graph, feeds)
        g.append(out["new_kv"], shape.tokens)
        g.hidden = g.own(out["hidden"])
        if "entropy" in out:
            g.entropy, g.entropy_grid = g.own(out["entropy"]), sched.grids[si]
        if "chunk_hidden" in out:
            g.chunks = g.own(out["chunk_hidden"])
        return g.real_rows(out["logits"])

    def regroup(self, groups: list[Group], assign: Tensor, si: int) -> list[Group]:
        cfg, precision = self.engine.config, self.engine.precision

        def spec_of(plan: Plan, s: int, size: int):
            shape = infinity_step_shape(plan, s, self.sched, size, self.capacity, self.text)
            return infinity_step_spec(cfg, shape, precision)

        width = group_width(self.engine, self.policy.plans, si, self.batch, spec_of, self.pad_groups)
        return regroup(groups, assign, self.policy.plans, si, self.policy.name, width, self.buffers)


def encode_prompts(engine: Engine, tokenizer, prompts: Sequence[str], negative: Sequence[str] | None, length: int):
    """T5 features of the prompts (and negative prompts): (rows, Lt, Ct5), masks (rows, Lt)."""
    texts = list(prompts) + list(negative or [])
    ids, mask = tokenizer.tokenize(texts, length)
    spec = text_encoder_spec(engine.config.text_channels, len(texts), length)
    feats = engine.run(spec, {"input_ids": ids.to(engine.device), "attention_mask": mask.to(engine.device)})["text"]
    return feats, mask.to(engine.device).float()


@torch.inference_mode()
def generate_infinity(
    engine: Engine,
    tokenizer,
    prompts: Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    seed: int | Sequence[int] | None = 0,
    sampling: BitwiseSampling | None = None,
    policy: Policy | None = None,
    plan: Plan | None = None,
    schedule: InfinitySchedule | None = None,
    text_length: int | None = None,
    capacity: int | None = None,
    on_scale: ScaleCallback | None = None,
    pad_groups: bool | None = None,
) -> TextGeneration:
    """Generate one image per prompt on ``engine`` (text encoder run by the engine, tokenised by
    ``tokenizer``, a :class:`~varrt.export.text_encoder.TextEncoder`).

    ``text_length`` is the padded prompt length (default: the smallest bucket that holds every
    prompt, see :func:`~varrt.export.text_encoder.text_bucket`); ``capacity`` the KV slots the
    engine's graphs were built for (default: the policy's own need); ``pad_groups`` as in VAR's
    :func:`~varrt.runtime.generate.generate`. ``seed``: one int (one generator for the batch) or
    one per prompt (per-sample generators, as in ``generate``).
    """
    cfg, dev = engine.config, engine.device
    sched = schedule or InfinitySchedule.for_ratio(1.0, "1M")
    sampling = sampling or BitwiseSampling()
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompt given")
    if policy is None:
        policy = StaticPolicy(plan or Plan.full(sched))
    for p in policy.plans:
        p.validate(sched, cfg.depth)
    b = len(prompts)
    negative = None
    if negative_prompt is not None:
        negative = [negative_prompt] * b if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negative) != b:
            raise ValueError(f"{len(negative)} negative prompts for {b} prompts (give one, or one per prompt)")
    need = kv_capacity(policy.plans, sched)
    capacity = capacity or getattr(engine, "kv_capacity", None) or need
    if capacity < need:
        raise PlanError(f"KV capacity {capacity} is below what policy {policy.name!r} needs ({need})")
    rng = make_generators(seed, dev)
    if per_sample(rng) and len(rng) != b:
        raise ValueError(f"{len(rng)} seeds for {b} prompts (give one seed, or one per prompt)")
    t_start = time.perf_counter()

    # ---- text, once
    if text_length is None:
        _, m = tokenizer.tokenize(prompts + (negative or []), cfg.text_maxlen)
        text_length = text_bucket(m.sum(1), maxlen=cfg.text_maxlen)
    if text_length > cfg.text_maxlen:
        raise ValueError(
            f"text length {text_length} is more than the model's {cfg.text_maxlen} text rows (cfg_uncond); "
            "use a shorter --text-length"
        )
    feats, mask = encode_prompts(engine, tokenizer, prompts, negative, text_length)
    pos_text, pos_mask = feats[:b], mask[:b]
    if negative is not None:
        text = torch.cat((pos_text, feats[b:]))
        tmask = torch.cat((pos_mask, mask[b:]))
        uncond = torch.zeros(2 * b, device=dev)
    else:  # the learned unconditional text, at each prompt's own length
        text, tmask = torch.cat((pos_text, pos_text)), torch.cat((pos_mask, pos_mask))
        uncond = torch.cat((torch.zeros(b, device=dev), torch.ones(b, device=dev)))
    cspec = infinity_conditioner_spec(cfg, 2 * b, text_length, engine.precision)
    cond = engine.run(cspec, {"text": text, "text_mask": tmask, "uncond": uncond})
    cond = {k: v.clone() for k, v in cond.items()}  # engine outputs may be reused buffers
    cond["text_bias"] = text_bias(tmask)
    t_cond = time.perf_counter()

    # ---- scales
    plans = policy.plans
    loop = InfinityScaleLoop(engine, policy, sched, capacity, text_length, b, pad_groups, seed)
    kv_spec = infinity_step_spec(cfg, TextStepShape(2 * b, 1, 1, capacity, past=1, text=text_length), engine.precision)
    kv = loop.buffers.take(kv_spec.input("kv"))
    groups = [Group(torch.arange(b), 0, kv, torch.full((cfg.depth, capacity), -torch.inf, device=dev), cond)]
    vgrid = vae_grid(sched.last, cfg.patchify)
    summed = torch.zeros(b, cfg.code_bits, *vgrid, device=dev)
    x_next = torch.zeros(b, 1, cfg.d_vae, device=dev)
    all_bits: list[Tensor | None] = []
    scale_seconds: list[float] = []
    decisions: list[dict] = []
    summed_prev = summed
    for si, grid in enumerate(sched.grids):
        t0 = time.perf_counter()
        loop.latents = (summed, summed_prev)
        summed_prev = summed
        bits_all = torch.full((b, sched.tokens(si), cfg.d_vae), -1, dtype=torch.int8)
        ran = False
        for g in groups:
            if not plans[g.plan_idx].scales[si].run:
                continue
            ran = True
            logits = loop.run_group(g, si, x_next[g.samples.to(dev)])
            g.logits = logits.reshape(logits.shape[0], -1, 2).clone()  # one 2-way distribution per bit
            bits, _ = sample_bits(logits, g.b, sampling, generators_of(rng, g.samples))
            codes = bits_to_codes(bits, grid, cfg.patchify)
            sel = g.samples.to(dev)
            if si == sched.num_scales - 1 and codes.shape[-2:] != summed.shape[-2:]:
                raise PlanError(f"the last scale's codes {tuple(codes.shape)} do not fit the decoder grid {vgrid}")
            summed = summed.index_copy(0, sel, accumulate(summed[sel], codes))
            bits_all[g.samples] = bits.to(torch.int8).cpu()
        all_bits.append(bits_all if ran else None)
        if si + 1 < sched.num_scales:
            x_next = next_input(summed, sched.grids[si + 1], cfg.patchify)
        state = ScaleState(si, torch.arange(b), x_next, None, engine, sched, summed, summed_prev, groups)
        assign = policy.after_scale(state)
        if assign is not None:
            decisions.append({"scale": si, "plans": [plans[int(p)].name for p in assign]})
            groups = loop.regroup(groups, assign, si)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        scale_seconds.append(time.perf_counter() - t0)
        if on_scale:
            on_scale(si, sched.num_scales, scale_seconds[-1])

    t_dec = time.perf_counter()
    images = engine.run(infinity_decoder_spec(engine.vae_config, b, vgrid), {"codes": summed})["image"]
    t_end = time.perf_counter()
    final = [""] * b
    for g in groups:
        for s in g.samples.tolist():
            final[s] = plans[g.plan_idx].name
    return TextGeneration(
        images=images.float().cpu(),
        bits=all_bits,
        codes=summed.cpu(),
        prompts=prompts,
        plans=final,
        decisions=decisions,
        seconds={
            "text": t_cond - t_start,
            "transformer": sum(scale_seconds),
            "decode": t_end - t_dec,
            "total": t_end - t_start,
        },
        scale_seconds=scale_seconds,
    )
