"""Token sampling, exactly as the official VAR sampler does it (var-spec.md §4).

Same seed, same logits -> same tokens: the filters and draws below consume the ``torch.Generator``
in the official order (one multinomial draw per token, then the Gumbel noise of ``more_smooth``).

Where the draws come from (:data:`Generators`) is the caller's choice. The official sampler draws
a whole batch from one generator, so a sample's tokens depend on which samples share its batch
and in which order. A server batches unrelated requests, and each must get the image it would get
alone, so it passes one generator per sample instead: sample i then draws only from its own, in
the same order and with the same shapes as a batch of one. A batch of one therefore consumes the
same stream either way, and per-sample generators seeded ``[s]`` reproduce the official ``s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: the random source of a batch's draws: one generator for the whole batch (the official stream),
#: one per sample (each sample's draws depend on its own seed only), or None (torch's global one)
Generators = torch.Generator | Sequence[torch.Generator] | None


def make_generators(seed: int | Sequence[int] | None, device: torch.device | str = "cpu") -> Generators:
    """One generator seeded ``seed`` (an int), one per sample (a sequence of seeds), or None."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return torch.Generator(device=device).manual_seed(seed)
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seed]


def per_sample(rng: Generators) -> bool:
    return rng is not None and not isinstance(rng, torch.Generator)


def generators_of(rng: Generators, samples: Tensor | Sequence[int]) -> Generators:
    """The generators of some samples of a batch (a group): per-sample ones are picked, a shared
    one (or None) is the group's too."""
    if not per_sample(rng):
        return rng
    return [rng[int(s)] for s in samples]


def draw(probs: Tensor, rng: Generators) -> Tensor:
    """One categorical draw per row of (B, K, C) probabilities: (B, K) indices. A shared generator
    draws all B x K rows in one call; per-sample generators draw sample i's K rows from the i-th."""
    b, k, c = probs.shape
    if not per_sample(rng):
        return torch.multinomial(probs.reshape(-1, c), num_samples=1, replacement=True, generator=rng).view(b, k)
    if len(rng) != b:
        raise ValueError(f"{len(rng)} per-sample generators for a batch of {b}")
    return torch.cat([
        torch.multinomial(probs[i].contiguous(), num_samples=1, replacement=True, generator=g).view(1, k)
        for i, g in enumerate(rng)
    ])  # fmt: skip


def exponential_like(t: Tensor, rng: Generators) -> Tensor:
    """Exp(1) noise shaped like ``t`` (B, ...): per-sample generators fill sample i's slice."""
    if not per_sample(rng):
        return torch.empty_like(t).exponential_(generator=rng)
    return torch.cat([torch.empty_like(t[i : i + 1]).exponential_(generator=g) for i, g in enumerate(rng)])


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
        check_numbers(self, cfg=float, top_k=int, top_p=float)
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1.0 switches it off), got {self.top_p}")

    def guidance(self, ratio: float) -> float:
        """t at a scale whose progress through the schedule is ``ratio`` (0 .. 1)."""
        return self.cfg * ratio


def check_numbers(config: object, **kinds: type) -> None:
    """Each named field a finite number of its kind (NaN compares False with every bound, so the
    range checks alone would let it through into the sampler)."""
    for name, kind in kinds.items():
        v = getattr(config, name)
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (kind is int and v != int(v)):
            what = "an integer" if kind is int else "a finite number"
            raise ValueError(f"{name} must be {what}, got {v!r}")


def cfg_mix(logits: Tensor, batch: int, t: float) -> Tensor:
    """(2B, N, V) [cond; uncond] -> (B, N, V):  (1 + t) cond - t uncond.  A (B, N, V) input is one
    branch's (the other was dropped: ``cond``, or ``uncond`` as HART samples its cfg-0 scales) and
    is returned as is."""
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


def sample_indices(logits: Tensor, rng: Generators) -> Tensor:
    """One multinomial draw per token from softmax(logits): (B, N, V) -> (B, N)."""
    return draw(logits.softmax(dim=-1), rng)


def gumbel_mixture(filtered_logits: Tensor, ratio: float, rng: Generators, codebook: Tensor) -> Tensor:
    """``more_smooth``: soft Gumbel-softmax mixture of codebook rows (B, N, Cvae)."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    logits = filtered_logits.mul(1 + ratio)
    gumbels = -exponential_like(logits, rng).log()
    probs = ((logits + gumbels) / tau).softmax(dim=-1)
    return probs @ codebook.unsqueeze(0)


def sample_scale(
    logits: Tensor,
    batch: int,
    ratio: float,
    sampling: SamplingConfig,
    rng: Generators,
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
