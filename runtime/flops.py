"""Transformer FLOPs of a plan, scale by scale (var-spec.md §6 conventions: 1 multiply-add = 2 FLOPs).

Per block and computed token: 24 C^2 (qkv 6, proj 2, fc1 8, fc2 8); attention 4 C n L over the
L live keys of that block; head 2 C V per output position; word embedding 2 Cvae C per token.
A block outside a scale's layer set only projects its tokens' keys and values (4 C^2 per token)
and adds them to its cache. Both CFG rows count. The AdaLN projections run once per generation (the conditioner) and are
reported apart. Attention is counted over live keys only — what the math needs, not the empty
cache slots a fixed-capacity graph also visits.
"""

from __future__ import annotations

from dataclasses import dataclass

from varrt.export.configs import VARConfig
from varrt.runtime.plan import Plan


@dataclass(frozen=True)
class ScaleFlops:
    linear: float
    attention: float
    head: float
    embed: float

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.head + self.embed


def plan_flops(cfg: VARConfig, plan: Plan, batch: int = 1) -> list[ScaleFlops]:
    """FLOPs of every scale of ``plan`` for ``batch`` images (zero for scales that do not run)."""
    sched, c = cfg.schedule, cfg.width
    live = [0] * cfg.depth
    out = []
    for si, sp in enumerate(plan.scales):
        if not sp.run:
            out.append(ScaleFlops(0.0, 0.0, 0.0, 0.0))
            continue
        rows = plan.rows(si, batch)
        n_full = sched.tokens(si)
        n = plan.tokens(si, sched)
        linear = attention = 0.0
        for layer in range(cfg.depth):
            if plan.fastvar_blocks is not None:  # FastVAR prunes inside its blocks only
                a, b = plan.fastvar_blocks
                n_l = n if a <= layer < b else n_full
            else:
                n_l = n
            live[layer] += n_l
            if sp.layers is not None and layer not in sp.layers:
                linear += 4 * c * c * n_l  # keys and values only
                continue
            linear += 24 * c * c * n_l
            attention += 4 * c * n_l * live[layer]
        embed_tokens = n_full if plan.fastvar_blocks is not None else n
        out.append(
            ScaleFlops(
                linear * rows,
                attention * rows,
                2 * c * cfg.vocab_size * n_full * rows,
                2 * cfg.latent_channels * c * embed_tokens * rows,
            )
        )
    return out


def conditioner_flops(cfg: VARConfig, batch: int = 1) -> float:
    """The once-per-generation AdaLN projections (6C x C per block, 2C x C for the head), both CFG rows."""
    c = cfg.width
    per_row = (2 * 6 * c * c if cfg.shared_aln else 2 * 6 * c * c * cfg.depth) + 2 * 2 * c * c
    return per_row * 2 * batch
