"""Transformer FLOPs of a plan, scale by scale (var-spec.md §6 and infinity-flops.md conventions:
1 multiply-add = 2 FLOPs).

Per block and computed token: 8 C^2 + 4 C F for self-attention projections and the FFN (qkv 6,
proj 2, fc1 and fc2 2 C F each, F the FFN width; 24 C^2 when F = 4 C); Infinity adds 4 C^2 for the
cross-attention query and output projections and 4 C Lt for its scores and values over the Lt text
tokens. Self-attention is 4 C n L over the L live keys of that block; head 2 C V per output
position; word embedding 2 Cin C per token. A block outside a scale's layer set only projects its
tokens' keys and values (4 C^2 per token) and adds them to its cache. Both CFG rows count. Work
done once per generation (VAR's AdaLN projections; Infinity's text keys and values, which the
official code recomputes at every scale) is reported apart. A low-rank (StageVAR) scale runs the
blocks of chunk c on its r_c mixtures and adds the mixing, 2 N r_c C per chunk (the token norms
and the scatter are a few N C more, not counted). Attention is counted over live keys
only — what the math needs, not the empty cache slots a fixed-capacity graph also visits.
"""

from __future__ import annotations

from dataclasses import dataclass

from varrt.export.configs import VARConfig
from varrt.export.infinity_config import InfinityConfig
from varrt.runtime.plan import Plan, Schedule


@dataclass(frozen=True)
class ScaleFlops:
    linear: float
    attention: float
    head: float
    embed: float

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.head + self.embed


def plan_flops(
    cfg: VARConfig | InfinityConfig,
    plan: Plan,
    batch: int = 1,
    schedule: Schedule | None = None,
    text: int = 0,
) -> list[ScaleFlops]:
    """FLOPs of every scale of ``plan`` for ``batch`` images (zero for scales that do not run).
    Infinity needs its request's ``schedule`` and the prompt bucket's ``text`` tokens."""
    infinity = isinstance(cfg, InfinityConfig)
    sched = schedule or cfg.schedule
    c, text = cfg.width, text if infinity else 0
    per_token = 8 * c * c + 4 * c * cfg.mlp_hidden + (4 * c * c if infinity else 0)
    vocab, embed_in = (cfg.vocab, cfg.d_vae) if infinity else (cfg.vocab_size, cfg.latent_channels)
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
        if sp.ranks is not None:  # the mixing of every chunk
            linear += sum(2 * n_full * r * c for r in sp.ranks)
        for layer in range(cfg.depth):
            if plan.fastvar_blocks is not None:  # FastVAR prunes inside its blocks only
                a, b = plan.fastvar_blocks
                n_l = n if a <= layer < b else n_full
            elif sp.ranks is not None:
                n_l = sp.ranks[layer // plan.lowrank_chunk]
            elif sp.block_tokens is not None:  # ToProVAR: per block
                n_l = sp.block_tokens[layer]
            else:
                n_l = n
            live[layer] += n_l
            if sp.layers is not None and layer not in sp.layers:
                linear += 4 * c * c * n_l  # keys and values only
                continue
            linear += per_token * n_l
            attention += 4 * c * n_l * (live[layer] + text)  # self-attention, then the text's
        embed_tokens = n_full if plan.fastvar_blocks is not None or sp.ranks is not None else n
        out.append(
            ScaleFlops(
                linear * rows,
                attention * rows,
                2 * c * vocab * n_full * rows,
                2 * embed_in * c * embed_tokens * rows,
            )
        )
    return out


def conditioner_flops(cfg: VARConfig | InfinityConfig, batch: int = 1, text: int = 0) -> float:
    """The once-per-generation work, both CFG rows: AdaLN projections (6C x C per block, or once
    when shared; 2C x C for the head) and, for Infinity, the text projection (Ct5 -> C -> C) and
    every block's text keys and values (2 x 2 C^2 per text token and block)."""
    c = cfg.width
    shared = isinstance(cfg, InfinityConfig) or cfg.shared_aln
    per_row = (2 * 6 * c * c if shared else 2 * 6 * c * c * cfg.depth) + 2 * 2 * c * c
    if isinstance(cfg, InfinityConfig):
        per_row += 2 * text * (cfg.text_channels * c + c * c) + 4 * text * c * c * cfg.depth
    return per_row * 2 * batch
