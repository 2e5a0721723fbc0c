"""StageVAR's low-rank scale as one static graph (arXiv 2512.16483; official code sen-mao/FasterVAR).

At a low-rank scale the blocks run chunk by chunk (on Infinity the checkpoint's 8 chunks: 4 blocks
each on Infinity-2B, 5 on 8B). For chunk c, with input X (N tokens x C channels; chunk 0's is the
embedded scale input) and rank r = ranks[c]:

    positions = the r largest of  log ||x_i||^2 + g_i,  g_i ~ Gumbel(0, 1)    (in descending order)
    M = Q^T X                       Q (N, r), i.i.d. N(0, 1/r): r Gaussian mixtures of all N tokens
    M <- the chunk's blocks on the r mixtures    (Infinity: mixture j gets the RoPE of raster position j)
    X' = up(P_c),  X'[positions[j]] = M[j]       P_c: this chunk's output at the previous scale

X' is the next chunk's input (new positions are drawn from it) and the head reads the last one.
``positions`` are r draws without replacement with probability proportional to ||x_i||^2, in draw
order — the official ``torch.multinomial(p, r, replacement=False)`` — written as a top-k of
perturbed log-weights (:func:`representative_positions` proves it) so that the draw stays inside the
graph, where the chunk input exists, while its randomness (g) and the projections (Q) are inputs
the runtime makes from the request's seed: torch, ONNX Runtime and TensorRT compute the same thing.
The up-sampling of the previous scale's chunk outputs (area, as the official ``F.interpolate``) is
the runtime's, like FastVAR's delta up-sampling; the scatter into it is the graph's.

The mixtures' keys and values are cached in the first r slots of the scale's N (a per-block
``kv_bias`` keeps the rest dead); they are only returned when a later scale reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from varrt.export.graphs import GraphSpec, TensorSpec, _cond_and_cache, check_past, chunk_ends
from varrt.export.var import VAR, Conditioning, Past, live_past, scatter_tokens


@dataclass(frozen=True)
class StageVarShape:
    """The static shape of one low-rank call: the scale's ``tokens``, and per chunk of ``chunk``
    blocks the number of random token mixtures its blocks run on (``ranks``)."""

    rows: int
    tokens: int
    ranks: tuple[int, ...]
    capacity: int
    chunk: int
    #: a later scale runs (a low-rank one) and reads this scale's keys, values and chunk outputs;
    #: in StageVAR's published setting nothing does, and the graph leaves them out
    returns_state: bool = False
    past: int = field(kw_only=True)  # the live prefix the call reads (see StepShape)
    component: ClassVar[str] = "transformer_stagevar"

    def __post_init__(self) -> None:
        check_past(self.past, self.capacity)

    def live(self, depth: int) -> tuple[int, ...]:
        """Per block, how many of the scale's N slots its keys fill: its chunk's r."""
        return tuple(self.ranks[i // self.chunk] for i in range(depth))

    @property
    def name(self) -> str:
        ranks = "-".join(map(str, self.ranks))
        tail = "_state" if self.returns_state else ""
        shape = f"r{self.rows}_n{self.tokens}_k{ranks}_p{self.past}_t{self.capacity}"
        return f"{self.component}_c{self.chunk}_{shape}{tail}"


# ------------------------------------------------------------------------------------------ the math
def representative_positions(h: Tensor, gumbel: Tensor, r: int) -> Tensor:
    """(R, N, C) chunk input, (R, N) Gumbel(0, 1) noise -> (R, r) positions: the r largest
    ``log ||x_i||^2 + g_i``, largest first.

    This is sampling r positions without replacement with p_i ∝ w_i = ||x_i||^2, the k-th output
    being the k-th draw. Proof: e^{-g_i} ~ Exp(1), so T_i = e^{-(log w_i + g_i)} = e^{-g_i} / w_i
    is exponential with rate w_i, independently for every i, and the descending order of
    log w_i + g_i is the ascending order of the T_i. In a race of independent exponential clocks
    the first to ring is i with probability w_i / sum_j w_j; by memorylessness the remaining clocks,
    given which rang first and when, are again independent exponentials with their own rates, so
    the second is j with probability w_j / sum_{l != i} w_l, and so on — exactly sequential draws
    without replacement in proportion to w (the Gumbel-top-k trick; Vieira 2014, Kool et al. 2019).
    A zero-norm token has log w = -inf and is never drawn, as with ``torch.multinomial``.
    """
    key = h.float().square().sum(-1).log() + gumbel
    return key.topk(r, dim=1).indices


def mix_tokens(proj: Tensor, h: Tensor) -> Tensor:
    """Q (R, N, r), X (R, N, C) -> Q^T X (R, r, C) in fp32: mixture j = sum_i Q[i, j] x_i."""
    return torch.matmul(proj.float().transpose(1, 2), h.float())


def first_slots(t: Tensor, n: int) -> Tensor:
    """(R, H, r, d) keys or values -> (R, H, n, d): in slots 0..r-1, zeros after."""
    slots = torch.arange(t.shape[2], device=t.device)
    return torch.zeros_like(t[:, :, :1]).expand(-1, -1, n, -1).index_copy(2, slots, t)


def raster_prefix(pos: Tensor, r: int) -> Tensor:
    """The first r positions of a scale's (R, N, ...) positions in raster order (a gather, so that
    one graph serves every r <= N)."""
    return pos.index_select(1, torch.arange(r, device=pos.device))


def run_chunks(
    h: Tensor,
    proj: tuple[Tensor, ...],
    gumbel: Tensor,
    chunk_restore: Tensor,
    chunks: tuple[int, ...],
    kv: Tensor,
    kv_bias: Tensor,
    run_block: Callable[[int, int, Tensor, Past], tuple[Tensor, Tensor, Tensor]],
    returns_state: bool,
) -> tuple[Tensor, ...]:
    """The chunk loop both families share, from the embedded scale input ``h`` (R, N, C):
    ``run_block(i, c, m, past)`` runs block i (of chunk c) on the mixtures m (R, r, C) attending
    to block i's live prefix of the cache (``past``, ``kv_bias[i]`` its bias) and to the r mixtures
    themselves, returning (m, k, v). Returns the last restored map, the
    positions (R, sum r) and, with ``returns_state``, new_kv (R, depth, 2, H, N, d) and the chunk
    outputs (R, K, N, C)."""
    n = h.shape[1]
    new_kv, outs, positions, start = [], [], [], 0
    for c, end in enumerate(chunks):
        r = proj[c].shape[-1]
        idx = representative_positions(h, gumbel[:, c], r)
        m = mix_tokens(proj[c], h)
        for i in range(start, end):
            m, k, v = run_block(i, c, m, live_past(kv, i, kv_bias[i]))
            new_kv.append(torch.stack((first_slots(k, n), first_slots(v, n)), dim=1))
        h = scatter_tokens(chunk_restore[:, c], idx, m)
        outs.append(h)
        positions.append(idx)
        start = end
    state = (torch.stack(new_kv, dim=1), torch.stack(outs, dim=1)) if returns_state else ()
    return h, torch.cat(positions, dim=1), *state


def var_stagevar_step(
    var: VAR,
    x: Tensor,
    pos_idx: Tensor,
    cond: Conditioning,
    kv: Tensor,
    kv_bias: Tensor,
    proj: tuple[Tensor, ...],
    gumbel: Tensor,
    chunk_restore: Tensor,
    chunks: tuple[int, ...],
    returns_state: bool = False,
) -> tuple[Tensor, ...]:
    """A low-rank VAR scale: x (R, N, Cvae), pos_idx (R, N), kv_bias (depth, T), proj[c] (R, N, r_c),
    gumbel (R, K, N), chunk_restore (R, K, N, C). VAR's positions are absolute embeddings added once
    before the first block, so a mixture carries the mixture of its tokens' positions (no position
    is chosen). Returns logits (R, N, V), positions (R, sum r) and, with ``returns_state``, new_kv
    (R, depth, 2, H, N, d) and the chunk outputs (R, K, N, C)."""

    def run_block(i: int, _c: int, m: Tensor, past: Past):
        return var.blocks[i](m, cond.ada[:, i], None, past)

    h = var.embed(x, pos_idx, cond.sos)
    h, *rest = run_chunks(h, proj, gumbel, chunk_restore, chunks, kv, kv_bias, run_block, returns_state)
    return (var.logits(h, cond.head_ada), *rest)


def infinity_stagevar_step(
    model,
    x: Tensor,
    pos: Tensor,
    cond,
    tbias: Tensor,
    kv: Tensor,
    kv_bias: Tensor,
    proj: tuple[Tensor, ...],
    gumbel: Tensor,
    chunk_restore: Tensor,
    chunks: tuple[int, ...],
    returns_state: bool = False,
) -> tuple[Tensor, ...]:
    """A low-rank Infinity scale (``model`` an :class:`~varrt.export.infinity.Infinity`): as
    :func:`var_stagevar_step`, with pos (R, N, 3) and the text; mixture j of every chunk gets the
    2-D RoPE of the scale's raster position j (the official ``apply_rotary_emb`` slices the table
    at [start, start + r) whatever the tokens are)."""
    # per chunk, computed once for its blocks (keyed by the chunk: under export r is symbolic)
    ropes: dict[int, tuple[Tensor, Tensor]] = {}

    def run_block(i: int, c: int, m: Tensor, past: Past):
        if c not in ropes:
            ropes[c] = model.rope(raster_prefix(pos, m.shape[1]))
        return model.blocks[i](m, cond.ada[:, i], ropes[c], past, cond.ca_kv[:, i], tbias)

    h = model.embed(x, pos, cond.sos)
    h, *rest = run_chunks(h, proj, gumbel, chunk_restore, chunks, kv, kv_bias, run_block, returns_state)
    return (model.logits(h, cond.head_ada), *rest)


# ------------------------------------------------------------------------------------------ the contract
def check_chunks(depth: int, shape: StageVarShape) -> tuple[int, ...]:
    """The chunk ends of ``shape`` on a model of ``depth`` blocks (its graph structure)."""
    ends = chunk_ends(depth, shape.chunk)
    if len(ends) != len(shape.ranks):
        raise ValueError(f"{shape.name}: {len(shape.ranks)} ranks for {len(ends)} chunks of {shape.chunk} blocks")
    return ends


def stagevar_inputs(width: int, shape: StageVarShape) -> tuple[TensorSpec, ...]:
    """A low-rank call's own inputs, made by the runtime: Gumbel noise per chunk and position (the
    draws of the representative positions), every chunk's previous-scale output up-sampled to this
    grid (what restores the positions the mixtures do not fill), and per chunk the projection Q
    (R, N, r) — last, one input per chunk, so that each r is a dim of its own."""
    r, n, k = shape.rows, shape.tokens, len(shape.ranks)
    return (
        TensorSpec("gumbel", (r, k, n), "float32"),
        TensorSpec("chunk_restore", (r, k, n, width), "float32"),
        *(TensorSpec(f"proj{c}", (r, n, rank), "float32") for c, rank in enumerate(shape.ranks)),
    )


def stagevar_outputs(width: int, shape: StageVarShape, logits: TensorSpec, new_kv: TensorSpec) -> tuple:
    """logits; the representative positions of every chunk, in draw order, concatenated; and with
    ``returns_state`` the keys/values (chunk c's blocks in slots 0..ranks[c]-1 of N) and the chunk
    outputs that a later low-rank scale reads."""
    r, n = shape.rows, shape.tokens
    state = (new_kv, TensorSpec("chunk_hidden", (r, len(shape.ranks), n, width), "float32"))
    return (logits, TensorSpec("positions", (r, sum(shape.ranks)), "int64"), *(state if shape.returns_state else ()))


def stagevar_spec(cfg, shape: StageVarShape, dtype: str = "float32") -> GraphSpec:
    """VAR's low-rank step: ``kv_bias`` is per block over the live prefix (each chunk of an earlier
    low-rank scale cached its own r keys)."""
    r, n, t = shape.rows, shape.tokens, shape.capacity
    return GraphSpec(
        shape.name,
        shape.component,
        (
            TensorSpec("x", (r, n, cfg.latent_channels), "float32"),
            TensorSpec("pos_idx", (r, n), "int64"),
            *_cond_and_cache(cfg, r, t, dtype, (cfg.depth, shape.past)),
            *stagevar_inputs(cfg.width, shape),
        ),
        stagevar_outputs(
            cfg.width,
            shape,
            TensorSpec("logits", (r, n, cfg.vocab_size), "float32"),
            TensorSpec("new_kv", (r, cfg.depth, 2, cfg.heads, n, cfg.head_dim), dtype),
        ),
        blocks=check_chunks(cfg.depth, shape),
    )


def stagevar_trace_shape(chunks: tuple[int, ...], capacity: int, text: int = 0) -> StageVarShape:
    """A shape to trace a low-rank graph with (every state output on): each rank its own value,
    distinct from the rows (3), the live prefix, the capacity and the text length, and never 0 or
    1, so that the exporter keeps every dim symbolic."""
    past = next(v for v in range(capacity - 2, 1, -1) if v not in (3, text))
    taken = {3, past, capacity, text}
    ranks = [v for v in range(4, 4 + len(chunks) + len(taken)) if v not in taken][: len(chunks)]
    tokens = next(v for v in range(max(ranks) + 1, max(ranks) + 6) if v not in taken)
    return StageVarShape(3, tokens, tuple(ranks), capacity, chunks[0], returns_state=True, past=past)


class StageVarGraph(nn.Module):
    """VAR's low-rank step with its chunks baked in (``chunks``: their ends)."""

    def __init__(self, var: VAR, chunks: tuple[int, ...], returns_state: bool) -> None:
        super().__init__()
        self.var, self.chunks, self.returns_state = var, chunks, returns_state

    def forward(self, x, pos_idx, sos, ada, head_ada, kv, kv_bias, gumbel, chunk_restore, *proj):
        cond = Conditioning(sos, ada, head_ada)
        return var_stagevar_step(
            self.var, x, pos_idx, cond, kv, kv_bias, proj, gumbel, chunk_restore, self.chunks, self.returns_state
        )
