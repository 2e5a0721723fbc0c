"""The generation loop: scale by scale, on any engine.

    cond = conditioner(labels ++ null labels)                 once
    for each scale si:
        logits, new_kv = transformer(x_si, positions, cond, kv, kv_bias)
        kv[slots] <- new_kv                                    fixed buffer, fixed addresses
        idx = sample( (1 + t) cond_logits - t uncond_logits )  t = cfg * si / (SN - 1)
        f_hat += Phi(upsample(codebook[idx]));  x_{si+1} = area_down(f_hat)
    image = decoder(f_hat)

Sampling, CFG mixing and the f_hat accumulation are this module's, shared by every backend; the
engine only runs the static graphs. The KV cache is laid out (rows, depth, 2, heads, T, head_dim)
with the conditional rows first, so a conditional-only scale reads ``kv[:B]``: a contiguous view,
no copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from varrt.engines.base import Engine
from varrt.export.graphs import StepShape, conditioner_spec, decoder_spec, transformer_spec
from varrt.runtime.plan import Plan, kv_capacity
from varrt.runtime.sampling import SamplingConfig, sample_scale

ScaleCallback = Callable[[int, int, float], None]


@dataclass
class Generation:
    images: Tensor  # (B, 3, H, W) in [0, 1], on the CPU
    indices: list[Tensor | None]  # per scale (B, pn*pn); None for scales the plan skipped
    f_hat: Tensor
    labels: Tensor
    seconds: dict[str, float] = field(default_factory=dict)  # condition, decode, total
    scale_seconds: list[float] = field(default_factory=list)


def resolve_labels(
    labels: Sequence[int] | Tensor | None,
    batch: int | None,
    num_classes: int,
    rng: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Class ids as a (B,) int64 tensor. ``num_classes`` itself is the null (unconditional) class;
    no labels draws B uniformly at random from the generator, as the official sampler does."""
    if labels is None:
        if not batch:
            raise ValueError("give class labels or a batch size for random labels")
        uniform = torch.full((1, num_classes), 1.0 / num_classes, device=device)
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


@torch.inference_mode()
def generate(
    engine: Engine,
    labels: Sequence[int] | Tensor | None = None,
    *,
    batch: int | None = None,
    seed: int | None = 0,
    sampling: SamplingConfig | None = None,
    plan: Plan | None = None,
    capacity: int | None = None,
    on_scale: ScaleCallback | None = None,
) -> Generation:
    """Generate images for class ``labels`` on ``engine`` following ``plan`` (default: full).

    ``capacity`` is the KV capacity the engine's graphs were built for (the largest of the plan
    set they serve); by default, the plan's own.
    """
    cfg, dev = engine.var_config, engine.device
    sched = cfg.schedule
    sampling = sampling or SamplingConfig()
    plan = (plan or Plan.full(sched)).validate(sched, cfg.depth)
    capacity = capacity or kv_capacity([plan], sched)
    rng = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
    t_start = time.perf_counter()

    labels_b = resolve_labels(labels, batch, cfg.num_classes, rng, dev)
    b = labels_b.shape[0]
    both = torch.cat((labels_b, torch.full_like(labels_b, cfg.null_class)))
    cond = engine.run(conditioner_spec(cfg, 2 * b), {"labels": both})
    t_cond = time.perf_counter()

    precision = engine.precision
    kv_spec = transformer_spec(cfg, StepShape(2 * b, 1, capacity), precision).input("kv")
    kv = torch.zeros(kv_spec.shape, dtype=kv_spec.torch_dtype, device=dev)
    kv_bias = torch.full((capacity,), -torch.inf, device=dev)
    quant = engine.quantizer
    codebook = quant.embedding.weight
    f_hat = torch.zeros(b, cfg.latent_channels, sched.last, sched.last, device=codebook.device)
    x_next = torch.zeros(b, 1, cfg.latent_channels, device=dev)
    filled = 0
    indices: list[Tensor | None] = []
    scale_seconds: list[float] = []

    for si, pn in enumerate(sched.patch_nums):
        sp = plan.scales[si]
        if not sp.run:
            indices.append(None)
            scale_seconds.append(0.0)
            continue
        t0 = time.perf_counter()
        shape = plan.step_shape(si, sched, b, capacity)
        graph = transformer_spec(cfg, shape, precision)
        rows, n = shape.rows, shape.tokens
        begin, _ = sched.begin_ends[si]
        feeds = {
            "x": x_next.repeat(2, 1, 1) if rows == 2 * b else x_next,
            "pos_idx": torch.arange(begin, begin + n, device=dev),
            "sos": cond["sos"][:rows],
            "ada": cond["ada"][:rows],
            "head_ada": cond["head_ada"][:rows],
            "kv": kv[:rows],
            "kv_bias": kv_bias,
        }
        out = engine.run(graph, feeds)
        kv[:rows, :, :, :, filled : filled + n] = out["new_kv"]
        kv_bias[filled : filled + n] = 0.0
        filled += n

        idx, codes = sample_scale(out["logits"], b, sched.ratio(si), sampling, rng, codebook.to(dev))
        h = quant.codes_to_map(codes.to(codebook.device), pn)
        f_hat, nxt = quant.next_input(si, f_hat, h)
        x_next = nxt.flatten(2).transpose(1, 2).to(dev)
        indices.append(idx.cpu())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        scale_seconds.append(time.perf_counter() - t0)
        if on_scale:
            on_scale(si, sched.num_scales, scale_seconds[-1])

    t_dec = time.perf_counter()
    images = engine.run(decoder_spec(engine.vqvae_config, b), {"f_hat": f_hat.to(dev)})["image"].float().cpu()
    t_end = time.perf_counter()
    return Generation(
        images=images,
        indices=indices,
        f_hat=f_hat.cpu(),
        labels=labels_b.cpu(),
        seconds={
            "condition": t_cond - t_start,
            "transformer": sum(scale_seconds),
            "decode": t_end - t_dec,
            "total": t_end - t_start,
        },
        scale_seconds=scale_seconds,
    )
