"""Infinity's bitwise sampling and BSQ code accumulation (infinity-spec.md §8-§9).

Per scale, from the head's logits (R, n, 2d) (``logits[..., 2j + c]``: bit j taking value c):

    L = logits / tau;  L = cfg L_cond + (1 - cfg) L_uncond          (one 2-way categorical per bit)
    top-k (no-op for k >= 2), top-p on each pair; one multinomial draw over all (token, bit) pairs
    code = (2 bit - 1) / sqrt(d_code), l2-normalised          (8B: 56 bits -> pixel_shuffle -> 14 x 2 x 2)
    summed += trilinear_up(code, last grid)                    (the last scale is added as is)
    next input = word_embed( trilinear_down(summed, next grid) )   (8B: pixel_unshuffle back to 56)

The only random draws of a generation are the per-scale multinomials, one ``exponential_`` fill
of a (B n d, 2) float32 tensor each, in scale order: same seed and same logits give the same bits.
Per-sample generators (a server's batches, see ``sampling.Generators``) fill each sample's (n d, 2)
rows from its own generator, which for a batch of one is the same stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from varrt.runtime.sampling import Generators, check_numbers, draw, filter_top_k_top_p_


@dataclass(frozen=True)
class BitwiseSampling:
    """Constant guidance ``cfg`` on the logits after the temperature ``tau``; top-k/top-p per bit pair.

    Defaults are ``gen_one_img``'s filters with the guidance of ``tools/run_infinity.py``
    (``scripts/infer.sh`` uses cfg 4, tau 0.5)."""

    cfg: float = 3.0
    tau: float = 1.0
    top_k: int = 900
    top_p: float = 0.97

    def __post_init__(self) -> None:
        check_numbers(self, cfg=float, tau=float, top_k=int, top_p=float)
        if not self.tau > 0:
            raise ValueError(f"tau (temperature) must be > 0, got {self.tau}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1.0 switches it off), got {self.top_p}")


def guided_bit_logits(logits: Tensor, batch: int, sampling: BitwiseSampling) -> Tensor:
    """(R, n, 2d) engine logits -> (B, n d, 2) guided per-bit logits (a new tensor). R = 2B mixes
    the two CFG halves; R = B (one branch) takes them as they are: L / tau of the conditional
    branch, or of the unconditional one — cfg = 0 in the mix, StageVAR's late scales."""
    scaled = logits.float() * (1.0 / sampling.tau)
    if scaled.shape[0] == 2 * batch:
        if sampling.cfg == 1.0:
            scaled = scaled[:batch]
        else:
            scaled = sampling.cfg * scaled[:batch] + (1 - sampling.cfg) * scaled[batch:]
    elif scaled.shape[0] != batch:
        raise ValueError(f"logits have {scaled.shape[0]} rows for a batch of {batch} (expected {batch} or {2 * batch})")
    return scaled.reshape(batch, -1, 2).clone()


def sample_bits(logits: Tensor, batch: int, sampling: BitwiseSampling, rng: Generators) -> tuple[Tensor, Tensor]:
    """Draw every bit of a scale: returns (bits (B, n, d) int64, the guided logits (B, n d, 2))."""
    n = logits.shape[1]
    guided = guided_bit_logits(logits, batch, sampling)
    filtered = filter_top_k_top_p_(guided.clone(), sampling.top_k, sampling.top_p)
    bits = draw(filtered.softmax(dim=-1), rng)  # (B, n d): one 2-way draw per bit
    return bits.view(batch, n, -1), guided


def bits_to_codes(bits: Tensor, grid: tuple[int, int], patchify: bool) -> Tensor:
    """(B, h w, d_vae) bits -> (B, d_code, H, W) BSQ codes on the VAE grid (2h x 2w when patchified)."""
    b, _, d = bits.shape
    h, w = grid
    x = bits.view(b, h, w, d).permute(0, 3, 1, 2).float()
    if patchify:
        x = F.pixel_shuffle(x, 2)
    codes = (2 * x - 1) / x.shape[1] ** 0.5
    return F.normalize(codes, dim=1)


def vae_grid(grid: tuple[int, int], patchify: bool) -> tuple[int, int]:
    return (2 * grid[0], 2 * grid[1]) if patchify else grid


def accumulate(summed: Tensor, codes: Tensor) -> Tensor:
    """summed (B, d, H, W) + codes trilinear-up-sampled to (H, W) (added as they are at full size)."""
    if codes.shape[-2:] == summed.shape[-2:]:
        return summed + codes
    up = F.interpolate(codes.unsqueeze(2), size=(1, *summed.shape[-2:]), mode="trilinear")
    return summed + up.squeeze(2)


def next_input(summed: Tensor, grid: tuple[int, int], patchify: bool) -> Tensor:
    """The next scale's transformer input (B, h w, d_vae): summed codes trilinear-down-sampled."""
    size = vae_grid(grid, patchify)
    x = F.interpolate(summed.unsqueeze(2), size=(1, *size), mode="trilinear").squeeze(2)
    if patchify:
        x = F.pixel_unshuffle(x, 2)
    return x.flatten(2).transpose(1, 2)
