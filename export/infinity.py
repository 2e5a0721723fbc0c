"""The Infinity transformer (infinity-spec.md §3-§8), official state-dict layout, functional step.

Per block (shared AdaLN: every block adds its own ``ada_gss`` to one projection of the pooled text):

    x <- x + gamma1 * SA( LN(x) (1 + scale1) + shift1 )          cosine attention, 2-D RoPE, scale 1
    x <- x + CA( LN_affine(x), text )                            every block reads the text tokens
    x <- x + gamma2 * FFN( LN(x) (1 + scale2) + shift2 )

The text path runs once per generation (:meth:`Infinity.condition`): RMS-normed T5 features ->
attention pooling (the start token and the AdaLN condition) and ``text_proj_for_ca`` -> every
block's cross-attention keys and values. The official sampler recomputes those keys and values at
every scale; they never change, so here they are an input of the per-scale step (``ca_kv``), like
the AdaLN modulation. The step's other inputs follow VAR's contract (:mod:`varrt.export.var`):
an explicit fixed-capacity KV cache with a liveness bias, and a dense fill of the scale's positions.
Positions are ``(level, row, col)`` per token: the level picks ``lvl_embed`` (level 0 is the start
token), row and col are the RoPE positions, already normalised to the template's 1M last grid.
The step's variants mirror VAR's: ``probe`` (also every block's self-attention entropy), ``layers``
(a layer set), :meth:`Infinity.step_fastvar` (FastVAR's pivotal tokens before each of the
three sub-blocks, cached deltas for the others) and :meth:`Infinity.step_toprovar` (ToProVAR's
lowest-entropy tokens per block after an early block of the same scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from varrt.export.infinity_config import InfinityConfig, InfinitySchedule
from varrt.export.var import (
    FFN,
    AdaLNBeforeHead,
    Past,
    SelfAttention,
    attention,
    dense,
    first_slots,
    gather_tokens,
    layer_norm,
    linear,
    live_past,
    lowest_entropy,
    pivotal_tokens,
    scatter_tokens,
)


class TextConditioning(NamedTuple):
    """Everything a prompt contributes to a generation, computed once (not once per scale)."""

    sos: Tensor  # (R, C) the start token: pooled text + pos_start
    ada: Tensor  # (R, depth, 6, C) per block: gamma1, gamma2, scale1, scale2, shift1, shift2
    head_ada: Tensor  # (R, 2, C) the head's AdaLN: scale, shift
    ca_kv: Tensor  # (R, depth, 2, H, Lt, head_dim) every block's cross-attention keys and values


def text_bias(mask: Tensor) -> Tensor:
    """(R, Lt) 1/0 validity -> additive attention bias (R, Lt): 0 for real tokens, -inf for padding."""
    return torch.where(mask > 0, 0.0, -torch.inf).float()


def scale_positions(schedule: InfinitySchedule, si: int) -> Tensor:
    """(n, 3) int64 (level, row, col) of scale si's tokens, row-major."""
    return torch.tensor([(si, r, c) for r, c in schedule.positions(si)], dtype=torch.int64)


def rope_frequencies(cfg: InfinityConfig) -> Tensor:
    """head_dim / 4 frequencies base^(-2i / (head_dim / 2)): the first head_dim / 4 rotation pairs
    turn with the row position, the next head_dim / 4 with the column (the official [height | width])."""
    half = cfg.head_dim // 2
    return 1.0 / cfg.rope_base ** (torch.arange(0, half, 2, dtype=torch.float32) / half)


class TextNorm(nn.Module):
    """RMSNorm over the T5 channels in fp32: x rsqrt(mean(x^2) + eps) w."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()


class PoolAttention(nn.Module):
    """Attention pooling: one learned query per head over the normed text (no cosine, no RoPE)."""

    def __init__(self, text_channels: int, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.mat_q = nn.Parameter(torch.zeros(1, heads, width // heads))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.mat_kv = nn.Linear(text_channels, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, text: Tensor, bias: Tensor) -> Tensor:
        """text (R, Lt, Ct5) normed, bias (R, Lt) -> (R, C)."""
        r, lt, _ = text.shape
        w = self.mat_kv.weight
        kv = F.linear(text.to(w.dtype), w, torch.cat((self.zero_k_bias, self.v_bias)).to(w.dtype))
        k, v = kv.view(r, lt, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = (self.mat_q.float() / math.sqrt(self.head_dim)).unsqueeze(2).expand(r, -1, -1, -1)
        out, _ = attention(q.to(k.dtype), k, v, bias.view(r, 1, 1, lt))
        return linear(self.proj, out.reshape(r, self.width)).float()


class TextPool(nn.Module):
    """``text_proj_for_sos``: the official wrapper around the pooling attention (``.ca``)."""

    def __init__(self, text_channels: int, width: int, heads: int) -> None:
        super().__init__()
        self.ca = PoolAttention(text_channels, width, heads)

    def forward(self, text: Tensor, bias: Tensor) -> Tensor:
        return self.ca(text, bias)


class CrossAttention(nn.Module):
    """Queries from the image tokens, keys/values from the projected text; softmax scale 1/sqrt(d)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def keys_values(self, text: Tensor) -> Tensor:
        """(R, Lt, C) projected text -> (R, 2, H, Lt, head_dim): constant for a whole generation."""
        r, lt, _ = text.shape
        w = self.mat_kv.weight
        kv = F.linear(text.to(w.dtype), w, torch.cat((self.zero_k_bias, self.v_bias)).to(w.dtype))
        return kv.view(r, lt, 2, self.heads, self.head_dim).permute(0, 2, 3, 1, 4)

    def forward(self, y: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
        """y (R, n, C), kv (R, 2, H, Lt, d), bias (R, Lt) -> (R, n, C) fp32."""
        r, n, _ = y.shape
        q = linear(self.mat_q, y).view(r, n, self.heads, self.head_dim).transpose(1, 2)
        q = (q.float() / math.sqrt(self.head_dim)).to(kv.dtype)
        out, _ = attention(q, kv[:, 0], kv[:, 1], bias.view(r, 1, 1, -1))
        return linear(self.proj, out.transpose(1, 2).reshape(r, n, self.width)).float()


class CrossAttnBlock(nn.Module):
    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        c = cfg.width
        self.width, self.eps = c, cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, c) / c**0.5)
        self.sa = SelfAttention(c, cfg.heads)
        self.ca = CrossAttention(c, cfg.heads)
        self.ffn = FFN(c, cfg.mlp_hidden)
        self.ca_norm = nn.LayerNorm(c, eps=cfg.norm_eps)

    def sa_input(self, x: Tensor, ada: Tensor) -> Tensor:
        _, _, scale1, _, shift1, _ = (a.unsqueeze(1) for a in ada.unbind(1))
        return layer_norm(x, self.eps) * (scale1 + 1) + shift1

    def sa_branch(
        self, x: Tensor, ada: Tensor, rope, past: Past | None, bias: Tensor | None = None, entropy: bool = False
    ) -> tuple[Tensor, ...]:
        """gamma1 * SA(...): the self-attention sub-block's residual delta and its new keys, values
        (and, when asked, the self-attention entropy of every token, averaged over heads: (R, n)).
        The tokens attend to the live cache ``past`` and to each other (``bias`` over their own
        keys: the teacher-forcing mask; None: all visible)."""
        q, k, v = self.sa.qkv(self.sa_input(x, ada), rope)
        out, ent = attention(q, k, v, bias, entropy, past)
        b, _, n, _ = out.shape
        out = linear(self.sa.proj, out.transpose(1, 2).reshape(b, n, self.width)).float()
        d = out * ada[:, 0].unsqueeze(1)
        return (d, k, v, ent) if entropy else (d, k, v)

    def ca_branch(self, x: Tensor, ca_kv: Tensor, tbias: Tensor) -> Tensor:
        """CA(LN_affine(x), text): the cross-attention sub-block's residual delta (no gamma)."""
        n = self.ca_norm
        y = F.layer_norm(x.float(), (self.width,), n.weight.float(), n.bias.float(), self.eps)
        return self.ca(y, ca_kv, tbias)

    def ffn_branch(self, x: Tensor, ada: Tensor) -> Tensor:
        """gamma2 * FFN(LN(x) (1 + scale2) + shift2): the feed-forward sub-block's residual delta."""
        _, gamma2, _, scale2, _, shift2 = (a.unsqueeze(1) for a in ada.unbind(1))
        return self.ffn(layer_norm(x, self.eps) * (scale2 + 1) + shift2) * gamma2

    def keys_values(self, x: Tensor, ada: Tensor, rope) -> tuple[Tensor, Tensor]:
        """Keys and values of ``x`` without running the block (a skipped layer)."""
        _, k, v = self.sa.qkv(self.sa_input(x, ada), rope)
        return k, v

    def forward(self, x, ada, rope, past, ca_kv, tbias, bias=None, entropy: bool = False) -> tuple[Tensor, ...]:
        """x -> (x after the block, new k, new v[, self-attention entropy (R, n)])."""
        d, *rest = self.sa_branch(x, ada, rope, past, bias, entropy)
        x = x + d
        x = x + self.ca_branch(x, ca_kv, tbias)
        return (x + self.ffn_branch(x, ada), *rest)


class BlockChunk(nn.Module):
    """The official checkpointing unit: ``block_chunks.{i}.module.{j}``; run in order."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.module = nn.ModuleList(CrossAttnBlock(cfg) for _ in range(cfg.blocks_per_chunk))


class Infinity(nn.Module):
    """Text-conditional bitwise next-scale prediction transformer (official key names and order)."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, ct5 = cfg.width, cfg.text_channels
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, ct5))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.text_norm = TextNorm(ct5, cfg.norm_eps)
        self.text_proj_for_sos = TextPool(ct5, c, cfg.pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(ct5, c), nn.GELU(approximate="tanh"), nn.Linear(c, c))
        self.lvl_embed = nn.Embedding(cfg.num_levels, c)
        self.word_embed = nn.Linear(cfg.d_vae, c)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.head_nm = AdaLNBeforeHead(c, cfg.norm_eps)
        self.head = nn.Linear(c, cfg.vocab)
        self.block_chunks = nn.ModuleList(BlockChunk(cfg) for _ in range(cfg.block_chunks))
        self.register_buffer("rope_inv_freq", rope_frequencies(cfg), persistent=False)

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        return [blk for chunk in self.block_chunks for blk in chunk.module]

    @property
    def mat_dtype(self) -> torch.dtype:
        """The blocks' dtype: the matmuls and the KV cache (the official build keeps them bf16)."""
        return self.block_chunks[0].module[0].sa.mat_qkv.weight.dtype

    # ---------------------------------------------------------------- the text path, once
    def condition(self, text: Tensor, mask: Tensor, uncond: Tensor) -> TextConditioning:
        """text (R, Lt, Ct5) T5 features, mask (R, Lt) 1 for real tokens, uncond (R,) 1 for rows
        that take the learned unconditional text ``cfg_uncond[:Lt]`` (under the same mask, so an
        unconditional row has its prompt's length) instead of ``text``."""
        lt = text.shape[1]
        learned = self.cfg_uncond[:lt].float().unsqueeze(0)
        text = torch.where(uncond.view(-1, 1, 1) > 0, learned, text.float())
        t = self.text_norm(text)
        bias = text_bias(mask)
        pooled = self.text_proj_for_sos(t, bias)
        shared = linear(self.shared_ada_lin[1], F.silu(pooled)).float().view(-1, 1, 6, self.cfg.width)
        ada = torch.stack([(blk.ada_gss.float() + shared).squeeze(1) for blk in self.blocks], dim=1)
        proj_in, _, proj_out = self.text_proj_for_ca
        ca_src = linear(proj_out, F.gelu(linear(proj_in, t), approximate="tanh"))
        ca_kv = torch.stack([blk.ca.keys_values(ca_src) for blk in self.blocks], dim=1)
        sos = pooled + self.pos_start[0].float()
        return TextConditioning(sos, ada, self.head_nm.adaln(pooled), ca_kv)

    # ---------------------------------------------------------------- embeddings and head
    def rope(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """pos (R, n, 3) -> cos, sin (R, 1, n, head_dim / 2) for the (row, col) RoPE."""
        f = self.rope_inv_freq
        angles = torch.cat((pos[..., 1:2].float() * f, pos[..., 2:3].float() * f), dim=-1)
        return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)

    def embed(self, x: Tensor, pos: Tensor, sos: Tensor) -> Tensor:
        """Input tokens: level 0 is the start token, the others embed the BSQ codes ``x`` (R, n, d_vae);
        every token gets its level's ``lvl_embed`` once, before the first block."""
        tokens = linear(self.word_embed, x).float()
        level = pos[..., 0]
        h = torch.where((level == 0).unsqueeze(-1), sos.unsqueeze(1), tokens)
        return h + self.lvl_embed(level).float()

    def logits(self, h: Tensor, head_ada: Tensor) -> Tensor:
        """(R, n, 2 d_vae) in fp32, as the official head (autocast off)."""
        hn = self.head_nm(h, head_ada)
        return dense(hn, self.head.weight.float(), self.head.bias.float())

    # ---------------------------------------------------------------- the per-scale step
    def step(
        self,
        x: Tensor,
        pos: Tensor,
        cond: TextConditioning,
        tbias: Tensor,
        kv: Tensor,
        kv_bias: Tensor,
        fill_idx: Tensor | None = None,
        fill_mask: Tensor | None = None,
        restore: Tensor | None = None,
        layers: tuple[int, ...] | None = None,
        probe: bool = False,
        chunks: tuple[int, ...] | None = None,
    ) -> tuple[Tensor, ...]:
        """One scale: x (R, n, d_vae), pos (R, n, 3), kv (R, depth, 2, H, T, d), kv_bias (P,) the bias
        of the cache's live prefix (VAR's :meth:`~varrt.export.var.VAR.step`), tbias (R, Lt). Returns
        logits (R, m, V) fp32, new_kv (R, depth, 2, H, n, d), hidden (R, m, C), and with ``probe``
        the self-attention entropy of the computed tokens in every block (R, depth, n), ToProVAR's
        per-block signal; ``fill_idx``/``fill_mask``/``restore``
        (R, m[, C]) as in VAR's step; ``layers``: the blocks that run (the others add keys and
        values only); ``chunks`` (the end block of every chunk): also the residual stream after
        each chunk (R, K, n, C), what StageVAR's low-rank scale after this one restores from."""
        h = self.embed(x, pos, cond.sos)
        rope = self.rope(pos)
        new_kv, entropy, chunk_out = [], [], []
        for i, blk in enumerate(self.blocks):
            ada = cond.ada[:, i]
            if layers is not None and i not in layers:
                new_kv.append(torch.stack(blk.keys_values(h, ada, rope), dim=1))
                continue
            past = live_past(kv, i, kv_bias)
            h, k, v, *ent = blk(h, ada, rope, past, cond.ca_kv[:, i], tbias, entropy=probe)
            new_kv.append(torch.stack((k, v), dim=1))
            entropy += ent
            if chunks is not None and i + 1 in chunks:
                chunk_out.append(h)
        if fill_idx is not None:
            h = torch.where(fill_mask.unsqueeze(-1) > 0, gather_tokens(h, fill_idx), restore)
        out = (self.logits(h, cond.head_ada), torch.stack(new_kv, dim=1), h)
        if chunks is not None:
            return (*out, torch.stack(chunk_out, dim=1))
        return (*out, torch.stack(entropy, dim=1)) if probe else out

    def step_fastvar(
        self,
        x: Tensor,
        pos: Tensor,
        cond: TextConditioning,
        tbias: Tensor,
        kv: Tensor,
        kv_bias: Tensor,
        keep_rank: Tensor,
        deltas: Tensor,
        pruned: range,
        returns_deltas: bool = True,
    ) -> tuple[Tensor, ...]:
        """FastVAR on Infinity: in the blocks ``pruned``, each of the three sub-blocks runs on its
        k pivotal tokens only.

        Before the self-attention, the cross-attention and the FFN of a pruned block, the k tokens
        of the current residual stream farthest from its mean token are selected (``keep_rank`` =
        arange(k)); the sub-block computes their residual delta (self-attention with RoPE at their
        own positions), and every other position takes its delta from ``deltas`` (R, depth, 3, n, C):
        the reference scale's SA / CA / FFN deltas, up-sampled (cached token restoration). Pruned
        tokens add no KV: a pruned block returns its k tokens' keys/values in slots 0..k-1 of its n
        (zeros after), so ``kv_bias`` is per block (depth, P). Returns logits (R, n, V), new_kv
        (R, depth, 2, H, n, d) and this scale's deltas (R, depth, 3, n, C) of every block, the cache
        a reference scale (run with k = n) hands to later ones; without ``returns_deltas`` (the
        pruned scales, whose deltas nobody reads) only logits and new_kv.
        """
        h = self.embed(x, pos, cond.sos)
        rope = self.rope(pos)
        n = h.shape[1]
        new_kv, new_deltas = [], []
        for i, blk in enumerate(self.blocks):
            ada, ca_kv, past = cond.ada[:, i], cond.ca_kv[:, i], live_past(kv, i, kv_bias[i])
            if i in pruned:
                idx = pivotal_tokens(h, keep_rank)
                d_sa, kk, vv = blk.sa_branch(gather_tokens(h, idx), ada, self.rope(gather_tokens(pos, idx)), past)
                d_sa = scatter_tokens(deltas[:, i, 0], idx, d_sa)
                kk = torch.zeros_like(kk[:, :, :1]).expand(-1, -1, n, -1).index_copy(2, keep_rank, kk)
                vv = torch.zeros_like(vv[:, :, :1]).expand(-1, -1, n, -1).index_copy(2, keep_rank, vv)
                h = h + d_sa
                idx = pivotal_tokens(h, keep_rank)
                d_ca = scatter_tokens(deltas[:, i, 1], idx, blk.ca_branch(gather_tokens(h, idx), ca_kv, tbias))
                h = h + d_ca
                idx = pivotal_tokens(h, keep_rank)
                d_ffn = scatter_tokens(deltas[:, i, 2], idx, blk.ffn_branch(gather_tokens(h, idx), ada))
            else:
                d_sa, kk, vv = blk.sa_branch(h, ada, rope, past)
                h = h + d_sa
                d_ca = blk.ca_branch(h, ca_kv, tbias)
                h = h + d_ca
                d_ffn = blk.ffn_branch(h, ada)
            h = h + d_ffn
            new_kv.append(torch.stack((kk, vv), dim=1))
            if returns_deltas:
                new_deltas.append(torch.stack((d_sa, d_ca, d_ffn), dim=1))
        out = self.logits(h, cond.head_ada), torch.stack(new_kv, dim=1)
        return (*out, torch.stack(new_deltas, dim=1)) if returns_deltas else out

    def step_toprovar(
        self,
        x: Tensor,
        pos: Tensor,
        cond: TextConditioning,
        tbias: Tensor,
        kv: Tensor,
        kv_bias: Tensor,
        keep_ranks: Sequence[Tensor],
        entropy_block: int,
    ) -> tuple[Tensor, Tensor]:
        """ToProVAR on Infinity, as :meth:`varrt.export.var.VAR.step_toprovar`: blocks
        0..``entropy_block`` run every token and the last of them measures the self-attention
        entropy of each; every later block runs only its k lowest-entropy tokens (self-attention
        with RoPE at their own positions, cross-attention, FFN), the others pass through it and add
        no keys or values to it. Returns logits (R, n, V), new_kv (R, depth, 2, H, n, d)."""
        h = self.embed(x, pos, cond.sos)
        rope = self.rope(pos)
        n = h.shape[1]
        new_kv, entropy = [], None
        for i, blk in enumerate(self.blocks):
            ada, ca_kv, past = cond.ada[:, i], cond.ca_kv[:, i], live_past(kv, i, kv_bias[i])
            if i <= entropy_block:
                h, k, v, *ent = blk(h, ada, rope, past, ca_kv, tbias, entropy=i == entropy_block)
                entropy = ent[0] if ent else entropy
            else:
                keep_rank = keep_ranks[i - entropy_block - 1]
                idx = lowest_entropy(entropy, keep_rank)
                kept_rope = self.rope(gather_tokens(pos, idx))
                t, k, v = blk(gather_tokens(h, idx), ada, kept_rope, past, ca_kv, tbias)
                h = scatter_tokens(h, idx, t)
                k, v = first_slots(k, keep_rank, n), first_slots(v, keep_rank, n)
            new_kv.append(torch.stack((k, v), dim=1))
        return self.logits(h, cond.head_ada), torch.stack(new_kv, dim=1)

    def empty_kv(self, rows: int, capacity: int, device=None) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        kv = torch.zeros(rows, cfg.depth, 2, cfg.heads, capacity, cfg.head_dim, dtype=self.mat_dtype, device=device)
        return kv, torch.full((capacity,), -torch.inf, device=device)

    # ---------------------------------------------------------------- teacher forcing
    def forward(self, text: Tensor, mask: Tensor, x_BLC: Tensor, schedule: InfinitySchedule) -> Tensor:
        """Masked pass over the whole sequence (block-causal over scales): text (B, Lt, Ct5), mask
        (B, Lt), x_BLC (B, L - 1, d_vae) the inputs of scales 1.. -> logits (B, L, V)."""
        b = text.shape[0]
        cond = self.condition(text, mask, torch.zeros(b, device=text.device))
        pos = torch.cat([scale_positions(schedule, si) for si in range(schedule.num_scales)]).to(text.device)
        pos = pos.expand(b, -1, -1)
        x = torch.cat((x_BLC.new_zeros(b, 1, x_BLC.shape[-1]), x_BLC), dim=1)
        h = self.embed(x, pos, cond.sos)
        rope = self.rope(pos)
        level = pos[0, :, 0]
        bias = torch.where(level.view(-1, 1) >= level.view(1, -1), 0.0, -torch.inf)
        tb = text_bias(mask)
        for i, blk in enumerate(self.blocks):
            h, _, _ = blk(h, cond.ada[:, i], rope, None, cond.ca_kv[:, i], tb, bias)
        return self.logits(h, cond.head_ada)

    # ---------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> Infinity:
        """Random weights in the official scheme's spirit (truncated normal, AdaLN gates near zero,
        cosine-attention scale ln 4): for tests and benchmarks, never for images."""
        g = torch.Generator().manual_seed(seed)
        std = math.sqrt(1 / self.cfg.width / 3)

        def tn(t: Tensor, s: float) -> None:
            t.copy_((torch.randn(t.shape, generator=g).clamp_(-2, 2) * s).to(t.dtype))

        for m in self.modules():
            if isinstance(m, nn.Linear):
                tn(m.weight, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                tn(m.weight, std)
        tn(self.pos_start, std)
        tn(self.cfg_uncond, 1.2 / math.sqrt(self.cfg.text_channels))
        tn(self.text_proj_for_sos.ca.mat_q, std)
        self.shared_ada_lin[1].weight[: 2 * self.cfg.width].mul_(1e-2)  # the gammas
        for blk in self.blocks:
            blk.ada_gss.copy_((torch.randn(blk.ada_gss.shape, generator=g) * 0.02).to(blk.ada_gss.dtype))
            blk.sa.scale_mul_1H11.fill_(math.log(4.0))
            for p in (blk.ffn.fc2.weight, blk.sa.proj.weight, blk.ca.proj.weight):
                p.div_(math.sqrt(2 * self.cfg.depth))
        return self
