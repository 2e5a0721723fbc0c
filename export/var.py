"""The VAR transformer (var-spec.md §2), with the official state-dict layout and a functional step.

Math, per block (AdaLN, l2-normalised attention, GELU-tanh FFN):

    x <- x + gamma1 * Attn( LN(x) * (1 + scale1) + shift1 )
    x <- x + gamma2 * FFN ( LN(x) * (1 + scale2) + shift2 )

    Attn: q = normalize(x Wq + bq) * exp(min(s_h, log 100)),  k = normalize(x Wk),  v = x Wv + bv
          out = softmax(q k^T + bias) v         (softmax scale 1: the logits are scaled cosines)

Two ways to run it:

* ``forward(labels, x_BLCv)``: one masked teacher-forcing pass over all L positions (training, tests).
* ``condition(labels)`` once per generation, then ``step(x, pos_idx, cond, kv, kv_bias)`` per
  scale. The step is a pure function of its inputs: the KV cache is an explicit tensor with a
  fixed capacity T (new keys and values are *returned*, the caller writes them into the buffer),
  and ``kv_bias`` (0 for filled slots, -inf for empty ones) says which slots are live. Every scale
  therefore has the same inputs and differs only in shapes — the unit exported per scale.

Precision: parameters may be fp16/bf16 (``model.to(dtype)``); the residual stream, the norms, the
softmax and the logits stay fp32, like the official autocast inference. In fp32 every cast is a no-op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from varrt.export.configs import VARConfig

MAX_SCALE_MUL = math.log(100.0)


class Conditioning(NamedTuple):
    """Everything a class label contributes to a generation, computed once (not once per scale).

    The AdaLN projections are a third of each block's weights; computing them here, once, keeps
    them out of every per-scale call, which matters at the small, weight-bandwidth-bound scales.
    """

    sos: Tensor  # (B, C) content of the first token: class embedding + pos_start
    ada: Tensor  # (B, depth, 6, C) per block: gamma1, gamma2, scale1, scale2, shift1, shift2
    head_ada: Tensor  # (B, 2, C) the head's AdaLN: scale, shift


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """LayerNorm without affine parameters, always computed in fp32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def dense(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., Cin) W^T + b. It exports as MatMul (+ Add), not as a 2-D Gemm: ONNX Runtime's
    quantizers (``varrt export --precision int8 | int8-cpu | fp8``) quantize MatMul nodes with a
    weight operand, and its dynamic form has no Gemm kernel."""
    return F.linear(x, weight, bias)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """Apply a linear layer in its own (compute) dtype."""
    return dense(x.to(layer.weight.dtype), layer.weight, layer.bias)


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=-1)`` without its ``expand_as``, which exports as an Expand that ONNX
    Runtime materialises (the division broadcasts the norm by itself; same numbers)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class Past(NamedTuple):
    """One block's live cache, as a step reads it: keys and values (R, H, P, head_dim) of the P
    live-prefix slots and their bias (P,) or (R, 1, 1, P) (0 live, -inf empty)."""

    k: Tensor
    v: Tensor
    bias: Tensor


def live_past(kv: Tensor, block: int, bias: Tensor) -> Past:
    """Block ``block``'s live prefix of the cache ``kv`` (R, depth, 2, H, T, head_dim): the first P
    slots, P = ``bias``'s last dim. Every slot is sliced in one step (one ONNX Slice over the block,
    kind and slot axes once the exporter merges the chain), so a backend copies the P live slots of
    the block at most once and never touches the empty tail of the fixed-capacity buffer."""
    p = bias.shape[-1]
    k = kv[:, block : block + 1, 0:1, :, :p].flatten(1, 3)
    v = kv[:, block : block + 1, 1:2, :, :p].flatten(1, 3)
    return Past(k, v, bias.float())


def attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, entropy: bool = False, past: Past | None = None
) -> tuple[Tensor, Tensor | None]:
    """softmax(q [past.k; k]^T + [past.bias, bias]) [past.v; v] with the logits and softmax in fp32
    (``bias`` None: every new key is visible); optionally the entropy of every query's attention
    row, averaged over heads: (B, N) (masked keys have p = 0 and add nothing).

    The past and the new keys are never concatenated: each part has its own scores, normalised
    together (one max, one sum), and the two products with the values are added. A concatenation
    would copy the whole live cache at every call of every block."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float()
    if bias is not None:
        scores = scores + bias
    if past is None:
        probs = scores.softmax(dim=-1)
        out = torch.matmul(probs.to(v.dtype), v)
        return out, (attention_entropy(probs).mean(1) if entropy else None)
    old = torch.matmul(q, past.k.transpose(-1, -2)).float() + past.bias
    top = torch.maximum(old.amax(dim=-1, keepdim=True), scores.amax(dim=-1, keepdim=True))
    e_old, e_new = (old - top).exp(), (scores - top).exp()
    total = e_old.sum(dim=-1, keepdim=True) + e_new.sum(dim=-1, keepdim=True)
    p_old, p_new = e_old / total, e_new / total
    out = torch.matmul(p_old.to(v.dtype), past.v) + torch.matmul(p_new.to(v.dtype), v)
    if not entropy:
        return out, None
    return out, (attention_entropy(p_old) + attention_entropy(p_new)).mean(1)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on interleaved pairs: (x[2m], x[2m+1]) turns by the angle of pair m."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


def attention_entropy(probs: Tensor) -> Tensor:
    """-sum p log p over the keys: 0 for a one-hot row, log n for a uniform one."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with l2-normalised q and k and a learned per-head scale."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads, self.head_dim = width, heads, width // heads
        # parameters and buffers are registered before the sub-layers, as in the official module,
        # so that state_dict() lists the keys in the official order.
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def qkv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, C) -> q, k, v of shape (B, H, N, head_dim); q carries the per-head scale. ``rope``
        (cos, sin), each (B, 1, N, head_dim / 2), rotates q and k after the normalisation, in fp32
        (Infinity; VAR has absolute positions instead)."""
        w = self.mat_qkv.weight
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)).to(w.dtype)
        b, n, _ = x.shape
        qkv = dense(x.to(w.dtype), w, bias).view(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale = self.scale_mul_1H11.float().clamp_max(MAX_SCALE_MUL).exp()
        q = l2_normalize(q.float()) * scale
        k = l2_normalize(k.float())
        if rope is not None:
            q, k = rotate_pairs(q, *rope), rotate_pairs(k, *rope)
        return q.to(w.dtype), k.to(w.dtype), v

    def forward(
        self, x: Tensor, bias: Tensor | None = None, past: Past | None = None, entropy: bool = False
    ) -> tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attend the N new tokens to [past; new] (``bias`` over the new keys: the teacher-forcing
        mask; None: all visible). Returns (output (B, N, C), new k, new v[, entropy (B, N)])."""
        q, k, v = self.qkv(x)
        out, ent = attention(q, k, v, bias, entropy, past)
        b, _, n, _ = out.shape
        out = linear(self.proj, out.transpose(1, 2).reshape(b, n, self.width)).float()
        return (out, k, v, ent) if entropy else (out, k, v)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, x), approximate="tanh")).float()


class AdaLNSelfAttn(nn.Module):
    """One VAR block. Non-shared models own ``ada_lin`` (C -> 6C); d36 owns ``ada_gss`` instead."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        c = cfg.width
        self.width, self.eps, self.shared_aln = c, cfg.norm_eps, cfg.shared_aln
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, c) / c**0.5)
        self.attn = SelfAttention(c, cfg.heads)
        self.ffn = FFN(c, cfg.mlp_hidden)
        if not cfg.shared_aln:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))

    def adaln(self, cond: Tensor, shared: Tensor | None) -> Tensor:
        """(B, 6, C): this block's modulation from the class embedding (or the shared projection)."""
        if self.shared_aln:
            return (self.ada_gss + shared).squeeze(1).float()
        return linear(self.ada_lin[1], F.silu(cond)).view(-1, 6, self.width).float()

    def attn_branch(
        self, x: Tensor, ada: Tensor, bias: Tensor | None = None, past: Past | None = None, entropy: bool = False
    ) -> tuple:
        """gamma1 * Attn(LN(x) (1 + scale1) + shift1): the attention sub-block's residual delta, new k, v
        (and the attention entropy of every token when asked)."""
        a, *rest = self.attn(self.attn_input(x, ada), bias, past, entropy)
        return (a * ada[:, 0].unsqueeze(1), *rest)  # gamma1

    def attn_input(self, x: Tensor, ada: Tensor) -> Tensor:
        """LN(x) (1 + scale1) + shift1: what the attention sub-block reads (and projects to k, v)."""
        _, _, scale1, _, shift1, _ = (a.unsqueeze(1) for a in ada.unbind(1))
        return layer_norm(x, self.eps) * (scale1 + 1) + shift1

    def keys_values(self, x: Tensor, ada: Tensor) -> tuple[Tensor, Tensor]:
        """The block's keys and values of ``x`` without its attention and FFN (a skipped block):
        later scales still attend to these tokens in this block, at 2C^2 of the block's 12C^2 per token."""
        _, k, v = self.attn.qkv(self.attn_input(x, ada))
        return k, v

    def ffn_branch(self, x: Tensor, ada: Tensor) -> Tensor:
        """gamma2 * FFN(LN(x) (1 + scale2) + shift2): the feed-forward sub-block's residual delta."""
        _, gamma2, _, scale2, _, shift2 = (a.unsqueeze(1) for a in ada.unbind(1))
        return self.ffn(layer_norm(x, self.eps) * (scale2 + 1) + shift2) * gamma2

    def forward(
        self, x: Tensor, ada: Tensor, bias: Tensor | None = None, past: Past | None = None, entropy: bool = False
    ) -> tuple:
        d, *rest = self.attn_branch(x, ada, bias, past, entropy)
        x = x + d
        return (x + self.ffn_branch(x, ada), *rest)


def pivotal_tokens(h: Tensor, keep_rank: Tensor) -> Tensor:
    """FastVAR's pivotal tokens: (R, N, C) -> (R, k) indices (ascending) of the k = len(keep_rank)
    tokens farthest from the mean token (squared distance), the least converged ones."""
    score = (h - h.mean(dim=1, keepdim=True)).square().sum(-1)
    return largest_k(score, keep_rank.shape[0])


def largest_k(score: Tensor, k: int) -> Tensor:
    """(R, N) scores -> (R, k) indices of the k highest, in ascending index order, for any k <= N
    with TopK's k never above min(k, N - k) <= N / 2.

    A plain sort (TopK with k = N) or ``topk(k)`` breaks TensorRT's TopK limit (k <= 3840) at
    Infinity's 1M scales (up to 4107 tokens; a reference scale keeps all of them). Instead: take
    the k highest when k <= N / 2, else the N - k lowest (as the highest of -score) and keep the
    rest, mark the kept tokens, and compact their indices with a running count (a stable
    partition: kept tokens first, in index order). Every quantity is computed from the shapes as
    tensor values, so one exported graph serves every (k, N) without shape guards.
    """
    r, n = score.shape
    kt, nt = score.new_ones(k).sum(), score.new_ones(n).sum()  # k and N as values
    sign = torch.where(2 * kt <= nt, 1.0, -1.0)  # +: select the kept tokens; -: the dropped ones
    _, idx = (score * sign).topk(torch.sym_max(torch.sym_min(k, n - k), 1), dim=1)
    hit_value = (torch.minimum(kt, nt - kt) > 0).to(score.dtype)  # k = N: nothing is dropped
    hit = torch.zeros_like(score).scatter(1, idx, hit_value.expand(idx.shape))
    kept = torch.where(sign > 0, hit, 1 - hit)
    count = kept.cumsum(1)  # float: TensorRT's CumSum takes floating-point types only (exact below 2^24)
    at = torch.arange(n, device=score.device, dtype=score.dtype)
    dest = torch.where(kept > 0, count - 1, kt + at - count).long()  # a permutation of 0..N-1
    order = torch.zeros_like(dest).scatter(1, dest, torch.arange(n, device=score.device).expand(r, n))
    return order[:, :k]


def lowest_entropy(entropy: Tensor, keep_rank: Tensor) -> Tensor:
    """ToProVAR's kept tokens: (R, N) attention entropy -> (R, k) indices (ascending) of the
    k = len(keep_rank) tokens with the most focused attention (the lowest entropy). Within one
    block and scale the paper's keep probability 1 - clip(a_min + (a_max - a_min) phi R H_hat) is
    decreasing in the entropy alone, so its top k are these (TopK within TensorRT's limit)."""
    return largest_k(-entropy, keep_rank.shape[0])


def first_slots(t: Tensor, keep_rank: Tensor, n: int) -> Tensor:
    """A pruned block's keys or values of its k computed tokens (R, H, k, d) in slots 0..k-1 of the
    scale's n (zeros after; the runtime marks only the first k live for that block)."""
    return torch.zeros_like(t[:, :, :1]).expand(-1, -1, n, -1).index_copy(2, keep_rank, t)


def _rows_of(idx: Tensor) -> Tensor:
    return torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(idx)


# Token gathers and scatters index whole rows of C channels (GatherND / ScatterND in ONNX), not
# single elements (GatherElements / ScatterElements): ONNX Runtime's CPU kernels for the element
# forms were 10x (gather) and 48x (scatter) slower on (2, 100, 1024) tokens, and the scatters were
# 14% of FastVAR's var-d16 reference-scale call.
def gather_tokens(h: Tensor, idx: Tensor) -> Tensor:
    """(R, N, C) tokens, (R, k) indices -> (R, k, C)."""
    return h[_rows_of(idx), idx]


def scatter_tokens(base: Tensor, idx: Tensor, src: Tensor) -> Tensor:
    """``base`` (R, N, C) with the tokens at (R, k) indices replaced by ``src`` (R, k, C)."""
    return base.index_put((_rows_of(idx), idx), src)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.width, self.eps = width, eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def adaln(self, cond: Tensor) -> Tensor:
        return linear(self.ada_lin[1], F.silu(cond)).view(-1, 2, self.width).float()

    def forward(self, x: Tensor, head_ada: Tensor) -> Tensor:
        scale, shift = (a.unsqueeze(1) for a in head_ada.unbind(1))
        return layer_norm(x, self.eps) * (scale + 1) + shift


class VAR(nn.Module):
    """Class-conditional next-scale prediction transformer (official key names and order)."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, sched = cfg.width, cfg.schedule
        L = sched.total_tokens
        self.pos_start = nn.Parameter(torch.empty(1, 1, c))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, c))
        lvl = torch.from_numpy(sched.level_of_positions()).view(1, L)
        self.register_buffer("lvl_1L", lvl)
        # block-causal across scales, bidirectional inside a scale
        mask = torch.where(lvl.view(L, 1) >= lvl.view(1, L), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, L, L).contiguous())
        self.word_embed = nn.Linear(cfg.latent_channels, c)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, c)
        self.lvl_embed = nn.Embedding(sched.num_scales, c)
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.blocks = nn.ModuleList(AdaLNSelfAttn(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(c, cfg.norm_eps)
        self.head = nn.Linear(c, cfg.vocab_size)
        nn.init.zeros_(self.pos_start)
        nn.init.zeros_(self.pos_1LC)

    # ---------------------------------------------------------------- conditioning and embeddings
    def condition(self, labels: Tensor) -> Conditioning:
        """Class ids (B,) -> the per-generation conditioning (the null class is ``num_classes``)."""
        cls = self.class_emb(labels).float()
        shared = None
        if self.cfg.shared_aln:
            shared = linear(self.shared_ada_lin[1], F.silu(cls)).view(-1, 1, 6, self.cfg.width)
        ada = torch.stack([blk.adaln(cls, shared) for blk in self.blocks], dim=1)
        sos = cls + self.pos_start[0].float()
        return Conditioning(sos=sos, ada=ada, head_ada=self.head_nm.adaln(cls))

    def level_position_table(self) -> Tensor:
        """(L, C): level embedding + absolute position of every position of the schedule."""
        return (self.lvl_embed(self.lvl_1L[0]) + self.pos_1LC[0]).float()

    def embed(self, x: Tensor, pos_idx: Tensor, sos: Tensor) -> Tensor:
        """Input tokens of the positions ``pos_idx`` (R, N): position 0 is the start token, the
        others embed the (down-sampled) accumulated latent ``x`` (R, N, Cvae)."""
        tokens = linear(self.word_embed, x).float()
        h = torch.where((pos_idx == 0).unsqueeze(-1), sos.unsqueeze(1), tokens)
        table = self.level_position_table()
        return h + table.index_select(0, pos_idx.reshape(-1)).view(*pos_idx.shape, table.shape[-1])

    def logits(self, h: Tensor, head_ada: Tensor) -> Tensor:
        return linear(self.head, self.head_nm(h, head_ada)).float()

    # ---------------------------------------------------------------- the per-scale step
    def step(
        self,
        x: Tensor,
        pos_idx: Tensor,
        cond: Conditioning,
        kv: Tensor,
        kv_bias: Tensor,
        fill_idx: Tensor | None = None,
        fill_mask: Tensor | None = None,
        restore: Tensor | None = None,
        probe: bool = False,
        layers: tuple[int, ...] | None = None,
        chunks: tuple[int, ...] | None = None,
    ) -> tuple[Tensor, ...]:
        """One scale: the n computed tokens attend to the live cache slots and to each other.

        x (R, n, Cvae) and pos_idx (R, n) are the computed tokens (all of the scale, or a budget of
        them); kv (R, depth, 2, H, T, head_dim) the fixed-capacity cache, kv_bias (P,) the bias of its
        live prefix (0 live, -inf empty; P <= T, the slots after P are never read). The m output positions take their
        final hidden state from a computed token (``fill_idx`` (R, m)) where ``fill_mask`` (R, m) is
        1 and from ``restore`` (R, m, C) where it is 0, so the sampled map stays dense however few
        tokens ran:
        dense scales fill from themselves, nearest-neighbour propagation fills pruned positions
        from the nearest computed token, cached restoration from an earlier scale's states.
        Returns logits (R, m, V) fp32, new_kv (R, depth, 2, H, n, head_dim), hidden (R, m, C), and
        with ``probe`` the attention entropy of the computed tokens in every block (R, depth, n).
        ``layers`` (a layer set; None = all) are the blocks that run; the others leave the residual
        stream as it is and only add the tokens' keys and values to the cache (``keys_values``), so
        the cache stays dense and later scales need no per-block masks. With ``chunks`` (the end
        block of every chunk) it also returns the residual stream after each chunk (R, K, n, C):
        what StageVAR's low-rank scale after this one restores from.
        """
        h = self.embed(x, pos_idx, cond.sos)
        new_kv, entropy, chunk_out = [], [], []
        for i, blk in enumerate(self.blocks):
            if layers is not None and i not in layers:
                new_kv.append(torch.stack(blk.keys_values(h, cond.ada[:, i]), dim=1))
                continue
            h, k, v, *ent = blk(h, cond.ada[:, i], None, live_past(kv, i, kv_bias), probe)
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
        pos_idx: Tensor,
        cond: Conditioning,
        kv: Tensor,
        kv_bias: Tensor,
        keep_rank: Tensor,
        deltas: Tensor,
        pruned: range,
        returns_deltas: bool = True,
    ) -> tuple[Tensor, ...]:
        """FastVAR: in the blocks ``pruned``, each sub-block runs on its k pivotal tokens only.

        Before each sub-block of a pruned block the k tokens farthest from the mean token are
        selected (``keep_rank`` = arange(k)); the sub-block computes their residual delta, and the
        other positions take the delta in ``deltas`` (R, depth, 2, N, C) — the reference scale's
        deltas up-sampled (cached token restoration). Pruned tokens add no KV: a pruned block
        returns its k tokens' keys/values in slots 0..k-1 of its N, and ``kv_bias`` is per block
        (depth, P) so each block sees only its own live slots. Returns logits (R, N, V), new_kv
        (R, depth, 2, H, N, head_dim) and this scale's deltas (R, depth, 2, N, C), the cache a
        reference scale hands to later ones; without ``returns_deltas`` (the pruned scales,
        whose deltas nobody reads) only logits and new_kv.
        """
        h = self.embed(x, pos_idx, cond.sos)
        n = h.shape[1]
        new_kv, new_deltas = [], []
        for i, blk in enumerate(self.blocks):
            ada, past = cond.ada[:, i], live_past(kv, i, kv_bias[i])
            if i in pruned:
                idx = pivotal_tokens(h, keep_rank)
                d, k, v = blk.attn_branch(gather_tokens(h, idx), ada, None, past)
                d = scatter_tokens(deltas[:, i, 0], idx, d)
                k = torch.zeros_like(k[:, :, :1]).expand(-1, -1, n, -1).index_copy(2, keep_rank, k)
                v = torch.zeros_like(v[:, :, :1]).expand(-1, -1, n, -1).index_copy(2, keep_rank, v)
                h = h + d
                idx = pivotal_tokens(h, keep_rank)
                d2 = scatter_tokens(deltas[:, i, 1], idx, blk.ffn_branch(gather_tokens(h, idx), ada))
            else:
                d, k, v = blk.attn_branch(h, ada, None, past)
                h = h + d
                d2 = blk.ffn_branch(h, ada)
            h = h + d2
            new_kv.append(torch.stack((k, v), dim=1))
            if returns_deltas:
                new_deltas.append(torch.stack((d, d2), dim=1))
        out = self.logits(h, cond.head_ada), torch.stack(new_kv, dim=1)
        return (*out, torch.stack(new_deltas, dim=1)) if returns_deltas else out

    def step_toprovar(
        self,
        x: Tensor,
        pos_idx: Tensor,
        cond: Conditioning,
        kv: Tensor,
        kv_bias: Tensor,
        keep_ranks: Sequence[Tensor],
        entropy_block: int,
    ) -> tuple[Tensor, Tensor]:
        """ToProVAR: token pruning by the attention entropy of an early block of the same scale.

        Blocks 0..``entropy_block`` run every token of the scale; the last of them also measures
        every token's attention entropy (-sum p log p over its keys, averaged over heads) inside its
        attention. Each later block ``l`` runs only the k_l = len(keep_ranks[l - entropy_block - 1])
        tokens of lowest entropy (selected in the graph, per row); the other tokens pass through the
        block unchanged (their residual stream skips it) and add no keys or values to its cache: a
        block's k_l computed tokens' keys/values go to slots 0..k_l-1 of the scale's n, and
        ``kv_bias`` is per block (depth, P) as in :meth:`step_fastvar`. Every position leaves with
        its own final state, so no restoration is needed. Returns logits (R, n, V), new_kv
        (R, depth, 2, H, n, head_dim).
        """
        h = self.embed(x, pos_idx, cond.sos)
        n = h.shape[1]
        new_kv, entropy = [], None
        for i, blk in enumerate(self.blocks):
            ada, past = cond.ada[:, i], live_past(kv, i, kv_bias[i])
            if i <= entropy_block:
                h, k, v, *ent = blk(h, ada, None, past, i == entropy_block)
                entropy = ent[0] if ent else entropy
            else:
                keep_rank = keep_ranks[i - entropy_block - 1]
                idx = lowest_entropy(entropy, keep_rank)
                t, k, v = blk(gather_tokens(h, idx), ada, None, past)
                h = scatter_tokens(h, idx, t)
                k, v = first_slots(k, keep_rank, n), first_slots(v, keep_rank, n)
            new_kv.append(torch.stack((k, v), dim=1))
        return self.logits(h, cond.head_ada), torch.stack(new_kv, dim=1)

    def empty_kv(self, batch: int, capacity: int, device=None) -> tuple[Tensor, Tensor]:
        """A zeroed KV cache of ``capacity`` slots and its all-empty bias."""
        cfg = self.cfg
        dtype = self.mat_dtype
        kv = torch.zeros(batch, cfg.depth, 2, cfg.heads, capacity, cfg.head_dim, dtype=dtype, device=device)
        return kv, torch.full((capacity,), -torch.inf, device=device)

    @property
    def mat_dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    # ---------------------------------------------------------------- teacher forcing
    def forward(self, labels: Tensor, x_BLCv: Tensor) -> Tensor:
        """Masked teacher-forcing pass: labels (B,), x_BLCv (B, L - 1, Cvae) -> logits (B, L, V).

        Unlike the official ``forward`` this never replaces labels by the null class: label
        dropout belongs to the training loop, not to the model.
        """
        L = self.cfg.schedule.total_tokens
        cond = self.condition(labels)
        pos = torch.arange(L, device=labels.device).expand(labels.shape[0], L)
        x = torch.cat((x_BLCv.new_zeros(x_BLCv.shape[0], 1, x_BLCv.shape[2]), x_BLCv), dim=1)
        h = self.embed(x, pos, cond.sos)
        bias = self.attn_bias_for_masking[:, :, :L, :L].float()
        for i, blk in enumerate(self.blocks):
            h, _, _ = blk(h, cond.ada[:, i], bias)
        return self.logits(h, cond.head_ada)

    # ---------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_weights(self, seed: int = 0, init_std: float | None = None) -> VAR:
        """The official initialisation scheme (truncated normal, std sqrt(1 / 3C); small head;
        AdaLN gammas near zero so every block starts close to the identity)."""
        g = torch.Generator().manual_seed(seed)
        c = self.cfg.width
        std = init_std if init_std is not None else math.sqrt(1 / c / 3)

        def tn(t: Tensor, s: float) -> None:
            t.copy_(torch.randn(t.shape, generator=g).clamp_(-2, 2) * s)

        for m in self.modules():
            if isinstance(m, nn.Linear):
                tn(m.weight, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                tn(m.weight, std)
        for p in (self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            tn(p, std)
        self.head.weight.mul_(0.02)
        self.head.bias.zero_()
        ada_linears = [blk.ada_lin[1] for blk in self.blocks if not self.cfg.shared_aln]
        if self.cfg.shared_aln:
            ada_linears.append(self.shared_ada_lin[1])
        for lin in ada_linears:
            lin.weight[2 * c :].mul_(0.5)  # scale, shift
            lin.weight[: 2 * c].mul_(1e-5)  # gammas
            lin.bias.zero_()
        for blk in self.blocks:
            blk.attn.scale_mul_1H11.fill_(math.log(4.0))
            blk.attn.q_bias.zero_()
            blk.attn.v_bias.zero_()
            blk.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))
            blk.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
        self.head_nm.ada_lin[1].weight.mul_(0.5)
        return self
