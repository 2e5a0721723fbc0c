"""Token sampling, exactly as the official VAR sampler does it (var-spec.md §4).

Same seed, same logits -> same tokens: the filters and draws below consume the ``torch.Generator``
in the official order (one multinomial draw per token, then the Gumbel noise of ``more_smooth``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """Guidance and filtering. ``top_k = 0`` and ``top_p = 1.0`` switch the filters off.

    cfg: guidance strength at the last scale; it ramps linearly from 0 at the first scale.
    more_smooth: the official Gumbel-softmax visualisation mode (soft codebook mixtures).
    """

    cfg: float = 4.0
    top_k: int = 900
    top_p: float = 0.95
    more_smooth: bool = False

    def __post_init__(self) -> None:
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1.0 switches it off), got {self.top_p}")

    def guidance(self, ratio: float) -> float:
        """t at a scale whose progress through the schedule is ``ratio`` (0 .. 1)."""
        return self.cfg * ratio


def cfg_mix(logits: Tensor, batch: int, t: float) -> Tensor:
    """(2B, N, V) [cond; uncond] -> (B, N, V):  (1 + t) cond - t uncond.  A (B, N, V) input is
    conditional-only (the CFG branch was dropped) and is returned as is."""
    if logits.shape[0] == batch:
        return logits
    return (1 + t) * logits[:batch] - t * logits[batch:]


def filter_top_k_top_p_(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Mask (in place, with -inf) what top-k and then top-p remove; returns ``logits``.

    top-k keeps every logit >= the k-th largest (ties kept). top-p sorts ascending, takes the
    cumulative softmax and removes entries whose cumulative mass is <= 1 - top_p, always keeping
    the largest one.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if 0 < top_p < 1:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return logits


def sample_indices(logits: Tensor, rng: torch.Generator | None) -> Tensor:
    """One multinomial draw per token from softmax(logits): (B, N, V) -> (B, N)."""
    b, n, v = logits.shape
    probs = logits.softmax(dim=-1).view(-1, v)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=rng).view(b, n)


def gumbel_mixture(filtered_logits: Tensor, ratio: float, rng: torch.Generator | None, codebook: Tensor) -> Tensor:
    """``more_smooth``: soft Gumbel-softmax mixture of codebook rows (B, N, Cvae)."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    logits = filtered_logits.mul(1 + ratio)
    gumbels = -torch.empty_like(logits).exponential_(generator=rng).log()
    probs = ((logits + gumbels) / tau).softmax(dim=-1)
    return probs @ codebook.unsqueeze(0)


def sample_scale(
    logits: Tensor,
    batch: int,
    ratio: float,
    sampling: SamplingConfig,
    rng: torch.Generator | None,
    codebook: Tensor,
) -> tuple[Tensor, Tensor]:
    """CFG mix -> top-k -> top-p -> draw -> codes. Returns (indices (B, N), codes (B, N, Cvae))."""
    mixed = cfg_mix(logits.float(), batch, sampling.guidance(ratio))
    if mixed.data_ptr() == logits.data_ptr():
        mixed = mixed.clone()  # the filters write in place; never into the engine's output buffer
    filtered = filter_top_k_top_p_(mixed, sampling.top_k, sampling.top_p)
    idx = sample_indices(filtered, rng)
    if sampling.more_smooth:
        return idx, gumbel_mixture(filtered, ratio, rng, codebook)
    return idx, codebook[idx]
