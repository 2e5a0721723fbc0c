"""StageVAR's low-rank scales in the runtime: the random draws the graph takes, and its results.

The low-rank graph (:mod:`varrt.export.stagevar`) draws nothing itself: per chunk it takes the
Gumbel noise g (one value per position: the representative positions are the top-r of
log ||x||^2 + g) and the projection Q (N, r), i.i.d. N(0, 1/r). The runtime makes them here, so
every backend computes the same thing from the same draws.

Randomness. The official code draws from the unseeded global CUDA RNG (per chunk: the positions
with ``torch.multinomial``, then Q with ``torch.randn``), at batch 1: nothing is reproducible.
varrt, with a request seed, gives every (sample, CFG row, low-rank scale) its own CPU generator,
seeded from (seed, scale, sample id, branch) — branch 0 for the conditional row, 1 for the
unconditional one — and draws per chunk g (N exponentials E, g = -log E) then Q (N x r normals,
scaled by 1/sqrt(r)). So a sample's draws do not depend on the batch it is in, on the group a
policy split it into, or on whether its other CFG row runs; with ``seed=None`` the draws come from
torch's global generator, as the official code's do. With one seed per sample (the generation's
``seed=[s0, s1, ...]``), sample i draws as sample 0 of a batch seeded ``s_i`` would: its draws then
depend on its own seed alone, like the rest of its image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from varrt.export.stagevar import StageVarShape
from varrt.runtime.selectors import upsample_tokens


def row_generator(seed: int, si: int, sample: int, branch: int) -> torch.Generator:
    """The generator of one CFG row of one sample at low-rank scale si."""
    state = np.random.SeedSequence([seed & (2**63 - 1), si, sample, branch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def sample_generator(seed: int | Sequence[int] | None, si: int, sample: int, branch: int) -> torch.Generator | None:
    """The generator of one CFG row of batch sample ``sample``: from the batch's seed and the
    sample's index, or from the sample's own seed (one per sample) as if it were sample 0."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return row_generator(seed, si, sample, branch)
    return row_generator(int(seed[sample]), si, 0, branch)


def lowrank_draws(
    ranks: Sequence[int],
    n: int,
    samples: Sequence[int],
    branches: Sequence[int],
    seed: int | Sequence[int] | None,
    si: int,
) -> tuple[Tensor, list[Tensor]]:
    """Gumbel noise (R, K, N) and one projection (R, N, r_c) per chunk, rows in the cache's order:
    every sample of ``branches[0]``, then every sample of ``branches[1]`` (0: cond, 1: uncond)."""
    gumbels, projs = [], [[] for _ in ranks]
    for branch in branches:
        for sample in samples:
            gen = sample_generator(seed, si, sample, branch)
            row = []
            for c, r in enumerate(ranks):
                row.append(-torch.empty(n).exponential_(generator=gen).log())
                projs[c].append(torch.randn(n, r, generator=gen) / math.sqrt(r))
            gumbels.append(torch.stack(row))
    return torch.stack(gumbels), [torch.stack(q) for q in projs]


def stagevar_feeds(
    g, shape: StageVarShape, grids: Sequence[tuple[int, int]], si: int, seed: int | Sequence[int] | None
) -> dict:
    """The low-rank graph's own inputs for group ``g`` (a :class:`~varrt.runtime.groups.Group`)
    at scale si: the draws, and every chunk's previous-scale output (``g.chunks``, which the scale
    before wrote) area-up-sampled to this grid. A padded group's padding rows repeat its last
    sample, draws included (their results are dropped)."""
    branches = {"both": (0, 1), "cond": (0,), "uncond": (1,)}[g.branch]
    samples = g.samples.tolist()
    samples += samples[-1:] * g.pad
    gumbel, proj = lowrank_draws(shape.ranks, shape.tokens, samples, branches, seed, si)
    dev = g.kv.device
    return {
        "gumbel": gumbel.to(dev),
        "chunk_restore": upsample_tokens(g.pad_rows(g.chunks), grids[si - 1], grids[si]),
        **{f"proj{c}": q.to(dev) for c, q in enumerate(proj)},
    }


def lowrank_result(g, shape: StageVarShape, out: dict[str, Tensor], depth: int) -> Tensor:
    """Keep what a later low-rank scale reads (its keys in the cache, its chunk outputs); return
    the logits of the group's real samples."""
    if shape.returns_state:
        g.append(out["new_kv"], shape.tokens, shape.live(depth))
        g.chunks = g.own(out["chunk_hidden"])
    else:
        g.chunks = None
    return g.real_rows(out["logits"])
