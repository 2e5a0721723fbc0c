"""Model configurations: the released VAR sizes, the VQVAE, and the scale schedules they share.

A config is everything needed to build a model with the right state-dict keys and shapes; it is
inferred back from a checkpoint by :mod:`varrt.export.checkpoint`, so a user never has to name it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

#: 256 px schedule of every released VAR checkpoint up to d30 (L = 680 tokens).
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
#: 512 px schedule of VAR-d36 (L = 2240 tokens).
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class ScaleSchedule:
    """The token grids of one generation: scale ``si`` has ``patch_nums[si] ** 2`` tokens.

    Positions are row-major inside a scale and scales are concatenated in order, which is how
    ``pos_1LC`` and the KV cache are laid out.
    """

    patch_nums: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.patch_nums or any(p < 1 for p in self.patch_nums):
            raise ValueError(f"a scale schedule needs positive side lengths, got {self.patch_nums}")
        if list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(f"scale side lengths must strictly increase, got {self.patch_nums}")

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def last(self) -> int:
        return self.patch_nums[-1]

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        """(h, w) of every scale: the form both families share (policies and selectors use it)."""
        return tuple((pn, pn) for pn in self.patch_nums)

    def tokens(self, si: int) -> int:
        return self.patch_nums[si] ** 2

    @cached_property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return tuple(out)

    @property
    def total_tokens(self) -> int:
        return self.begin_ends[-1][1]

    def progress(self, si: int) -> float:
        """Progress through the schedule, 0 at the first scale and 1 at the last (CFG ramp, Phi map)."""
        return si / (self.num_scales - 1) if self.num_scales > 1 else 1.0

    def level_of_positions(self) -> np.ndarray:
        """The scale index of every position (the official ``lvl_1L`` buffer)."""
        return np.concatenate([np.full(pn * pn, si, dtype=np.int64) for si, pn in enumerate(self.patch_nums)])


def phi_index_map(num_scales: int, num_phi: int = 4) -> tuple[int, ...]:
    """Which of the shared Phi convolutions refines scale ``si``.

    The official quantizer indexes its K Phis by the float ``r = si / (SN - 1)`` through the nearest
    of K fixed ticks, with numpy float64 argmin (so the exact ties at si = 2 and si = 7 of a 10-scale
    schedule fall the way float rounding takes them). Computing it the same way keeps any schedule
    right; for 10 scales it is (0, 0, 1, 1, 1, 2, 2, 3, 3, 3).
    """
    k = num_phi
    if k == 4:
        ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
    else:
        ticks = np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    out = []
    for si in range(num_scales):
        r = si / (num_scales - 1) if num_scales > 1 else 1.0
        out.append(int(np.argmin(np.abs(ticks - r)).item()))
    return tuple(out)


@dataclass(frozen=True)
class VARConfig:
    """A VAR transformer. ``width`` is C, ``heads`` the attention heads (head_dim = C / heads)."""

    depth: int
    width: int
    heads: int
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    shared_aln: bool = False
    num_classes: int = 1000
    vocab_size: int = 4096
    latent_channels: int = 32
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        ScaleSchedule(self.patch_nums)  # validates

    @property
    def schedule(self) -> ScaleSchedule:
        return ScaleSchedule(self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return round(self.width * self.mlp_ratio)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def label(self) -> str:
        return self.name or f"var-d{self.depth}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_nums"] = list(self.patch_nums)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VARConfig:
        d = dict(d)
        d["patch_nums"] = tuple(d["patch_nums"])
        return cls(**d)

    def param_count(self) -> int:
        """Parameter count from the closed-form formulas of var-spec.md §2.5 (buffers excluded)."""
        c, L = self.width, self.schedule.total_tokens
        h = self.mlp_hidden
        block = 3 * c * c + (c * c + c) + (c * h + h) + (h * c + c) + 2 * c + self.heads
        block += 6 * c if self.shared_aln else 6 * c * c + 6 * c
        rest = c + L * c + (self.num_classes + 1) * c + self.schedule.num_scales * c
        rest += (self.latent_channels + 1) * c + (2 * c * c + 2 * c) + (self.vocab_size * c + self.vocab_size)
        if self.shared_aln:
            rest += 6 * c * c + 6 * c
        return self.depth * block + rest


def _released(depth: int, patch_nums: tuple[int, ...] = PATCH_NUMS_256, shared_aln: bool = False) -> VARConfig:
    return VARConfig(
        depth=depth,
        width=64 * depth,
        heads=depth,
        patch_nums=patch_nums,
        shared_aln=shared_aln,
        name=f"var-d{depth}",
    )


#: The released checkpoints (var-spec.md §0), by the names the CLI accepts.
RELEASED_VAR: dict[str, VARConfig] = {
    "var-d16": _released(16),
    "var-d20": _released(20),
    "var-d24": _released(24),
    "var-d30": _released(30),
    "var-d36": _released(36, PATCH_NUMS_512, shared_aln=True),
}


def var_config(name: str) -> VARConfig:
    """A released or test configuration by name: ``var-d16`` ... ``var-d36``, or ``var-tiny-d{N}``."""
    if name in RELEASED_VAR:
        return RELEASED_VAR[name]
    if name.startswith("var-tiny-d") and name[len("var-tiny-d") :].isdigit():
        depth = int(name[len("var-tiny-d") :])
        return VARConfig(depth=depth, width=64 * depth, heads=depth, name=name)
    known = ", ".join([*RELEASED_VAR, "var-tiny-d{N}"])
    raise ValueError(f"unknown model {name!r}; known: {known}")


@dataclass(frozen=True)
class VQVAEConfig:
    """The multi-scale residual VQVAE (``vae_ch160v4096z32`` by default).

    ``ch_mult`` fixes the downsampling factor 2 ** (len(ch_mult) - 1); ``patch_nums`` is the
    schedule the quantizer encodes with (its last entry is the latent side).
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    num_phi: int = 4
    phi_ratio: float = 0.5
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    #: first dimension of the training-statistics buffer quantize.ema_vocab_hit_SV
    ema_scales: int = 10

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def with_schedule(self, patch_nums: tuple[int, ...]) -> VQVAEConfig:
        d = self.to_dict()
        d["patch_nums"] = tuple(patch_nums)
        return VQVAEConfig.from_dict(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["patch_nums"] = list(self.patch_nums)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQVAEConfig:
        d = dict(d)
        d["ch_mult"] = tuple(d["ch_mult"])
        d["patch_nums"] = tuple(d["patch_nums"])
        return cls(**d)


def is_square(n: int) -> bool:
    return n >= 1 and math.isqrt(n) ** 2 == n
