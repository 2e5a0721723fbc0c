"""Knife-edge draws: where an engine's float rounding can change which tokens the sampler keeps.

The sampler is exact (same logits, same generator -> same tokens), but an engine's logits for a
row depend, in their last bits, on the row's position and the batch size (ONNX Runtime's CPU
kernels: up to ~1.7e-5 on the demo model, benchmarks/results/batch-invariance-demo.md). That
changes a draw only where top-k or top-p cuts between two tokens whose guided logits are closer
than that: one run keeps the token, the other drops it, and the image after it differs. This
module finds such cuts in a generation, so that a request whose batched image differs from its
image alone can be told apart from rows that mix (which move logits by order 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from varrt.runtime.sampling import SamplingConfig, cfg_mix

#: the largest logit difference between a request's rows in a batch and alone that is float
#: rounding: 1.7e-5 measured (demo model, ORT and torch, batch 4 vs 1), with some margin
ROW_ROUNDING = 3e-5


class LogitRecorder:
    """Wraps an engine: keeps a copy of every transformer call's logits (outputs may be reused
    buffers); everything else is the engine's."""

    def __init__(self, engine) -> None:
        self.inner, self.logits = engine, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, graph, feeds):
        out = self.inner.run(graph, feeds)
        if graph.component == "transformer":
            self.logits.append(out["logits"].detach().float().clone())
        return out

    def take(self) -> list[Tensor]:
        out, self.logits = self.logits, []
        return out


def cut_gaps(logits: Tensor, sampling: SamplingConfig, t: float) -> Tensor:
    """Per token of a batch-1 call's logits ((2, n, V) with CFG, (1, n, V) without): how far its
    top-k and top-p cuts are from moving — the last token removed and the first kept swapping, or
    top-p's cumulative mass crossing its threshold — in units of raw logits (over 1 + 2t: CFG's
    (1 + t) L_c - t L_u moves by up to that much when each branch moves by one). inf where no
    filter cuts."""
    mixed = cfg_mix(logits.float(), 1, t)[0]
    gaps = torch.full(mixed.shape[:1], torch.inf)
    vocab = mixed.shape[-1]
    if 0 < sampling.top_k < vocab:
        top = mixed.topk(sampling.top_k + 1, dim=-1).values
        gaps = torch.minimum(gaps, top[:, -2] - top[:, -1])
        mixed = mixed.masked_fill(mixed < top[:, -2:-1], -torch.inf)
    if 0 < sampling.top_p < 1:
        ordered = mixed.sort(dim=-1).values
        mass = ordered.softmax(dim=-1).cumsum(dim=-1)
        removed = (mass <= 1 - sampling.top_p).sum(dim=-1)
        removed = removed.clamp(max=vocab - 1)  # the largest is always kept
        kept_first = ordered.gather(-1, removed[:, None])[:, 0]
        removed_last = ordered.gather(-1, (removed - 1).clamp(min=0)[:, None])[:, 0]
        finite = (removed > 0) & torch.isfinite(removed_last)
        gaps = torch.minimum(gaps, torch.where(finite, kept_first - removed_last, torch.inf))
        # or the cumulative mass crosses the threshold (a probability; a logit shift of d moves it
        # by less than d)
        gaps = torch.minimum(gaps, (mass - (1 - sampling.top_p)).abs().amin(dim=-1))
    return gaps / (1 + 2 * t)


def narrowest_cut(calls: Sequence[tuple[int, Tensor]], sampling: SamplingConfig, progress) -> tuple[float, int, int]:
    """The narrowest cut of a batch-1 generation's (scale, logits) calls: (gap, scale, token
    position among the call's tokens). ``progress(si)`` is the schedule's progress (the CFG ramp)."""
    best = (float("inf"), -1, -1)
    for si, logits in calls:
        gaps = cut_gaps(logits, sampling, sampling.guidance(progress(si)))
        pos = int(gaps.argmin())
        if float(gaps[pos]) < best[0]:
            best = (float(gaps[pos]), si, pos)
    return best


def knife_edge(pipe, label: int, seed: int, policy: str = "full", sampling=None) -> tuple[float, int, int]:
    """The narrowest cut of one request generated alone on a VAR ``pipe``: (gap, scale, token). A
    request whose gap is below :data:`ROW_ROUNDING` may draw another token in a batch without any
    row mixing; one whose gap is far above it may not."""
    recorder = LogitRecorder(pipe.engine)
    calls: list[tuple[int, Tensor]] = []

    def tag(si: int, _scales: int, _seconds: float) -> None:  # after each scale: its calls' logits
        calls.extend((si, logits) for logits in recorder.take())

    inner, pipe.engine = pipe.engine, recorder
    try:
        pipe.generate([label], seed=[seed], policy=policy, sampling=sampling, on_scale=tag)
    finally:
        pipe.engine = inner
    return narrowest_cut(calls, pipe.sampling(sampling), inner.var_config.schedule.progress)
