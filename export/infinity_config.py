"""Infinity's configurations: the transformer sizes, the BSQ VAE, and the aspect-ratio schedules.

Facts from infinity-spec.md §1 (build settings) and §7 (``dynamic_resolution``): every template
lists 13 token grids (h, w); the ``pn`` names take a prefix of them (0.06M: 7, 0.25M: 10, 0.60M:
12, 1M: 13). RoPE positions are normalised by the *1M* template's last grid whatever ``pn`` is, so
a schedule carries that normaliser with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property

#: 1M grids of the 8 base templates (h/w >= 1); the transposed templates swap h and w
_BASE_TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = {
    1.0: tuple((s, s) for s in (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)),
    1.25: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
           (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.5: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
          (63, 42), (78, 52)),
    1.75: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
           (70, 40), (84, 48)),
    2.0: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
          (74, 37), (90, 45)),
    2.5: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
          (80, 32), (100, 40)),
    3.0: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
           (90, 30), (111, 37)),
}  # fmt: skip


def _templates() -> dict[float, tuple[tuple[int, int], ...]]:
    out = dict(_BASE_TEMPLATES)
    for ratio, grids in _BASE_TEMPLATES.items():
        if ratio != 1.0:
            # the official key of a transposed template is int(1000 / ratio) / 1000
            out[int(1000 / ratio) / 1000] = tuple((w, h) for h, w in grids)
    return out


#: h/w -> the 13 1M grids; 15 templates
TEMPLATES = _templates()
#: how many grids of a template each ``pn`` uses
PN_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


@dataclass(frozen=True)
class InfinitySchedule:
    """The token grids of one generation, and the 1M last grid its RoPE positions are normalised to.

    Scale ``si`` is an ``h x w`` grid in row-major order; scales are concatenated in order in the
    KV cache. Scale 0 is always 1x1: the start token.
    """

    grids: tuple[tuple[int, int], ...]
    rope_grid: tuple[int, int]  # (uph, upw): the template's 1M last grid
    ratio: float = 1.0  # the template's h/w

    def __post_init__(self) -> None:
        if not self.grids or self.grids[0] != (1, 1):
            raise ValueError(f"an Infinity schedule starts with the 1x1 start token, got {self.grids[:1]}")

    @classmethod
    def for_ratio(cls, h_div_w: float = 1.0, pn: str = "1M") -> InfinitySchedule:
        """The official schedule of the template nearest to ``h_div_w`` (|difference|), first
        ``PN_SCALES[pn]`` grids."""
        if pn not in PN_SCALES:
            raise ValueError(f"unknown pn {pn!r}; Infinity's schedules are {sorted(PN_SCALES)}")
        if not h_div_w > 0:
            raise ValueError(f"aspect ratio h/w must be positive, got {h_div_w}")
        ratio = min(TEMPLATES, key=lambda r: abs(r - h_div_w))
        grids = TEMPLATES[ratio]
        return cls(grids[: PN_SCALES[pn]], grids[-1], ratio)

    @classmethod
    def from_dict(cls, d: dict) -> InfinitySchedule:
        return cls(tuple(tuple(g) for g in d["grids"]), tuple(d["rope_grid"]), d.get("ratio", 1.0))

    def to_dict(self) -> dict:
        return {"grids": [list(g) for g in self.grids], "rope_grid": list(self.rope_grid), "ratio": self.ratio}

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def last(self) -> tuple[int, int]:
        return self.grids[-1]

    def tokens(self, si: int) -> int:
        h, w = self.grids[si]
        return h * w

    def progress(self, si: int) -> float:
        """0 at the first scale, 1 at the last (as VAR's schedule: policies ramp with it)."""
        return si / (self.num_scales - 1) if self.num_scales > 1 else 1.0

    @cached_property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        out, cur = [], 0
        for h, w in self.grids:
            out.append((cur, cur + h * w))
            cur += h * w
        return tuple(out)

    @property
    def total_tokens(self) -> int:
        return self.begin_ends[-1][1]

    def positions(self, si: int) -> list[tuple[int, int]]:
        """(row, col) RoPE positions of scale si's tokens, row-major: i * uph / h rounded half to
        even (Python's round, like torch.round), computed from float32 products as the official
        table is."""
        import numpy as np

        h, w = self.grids[si]
        uph, upw = self.rope_grid
        rows = np.round(np.arange(h, dtype=np.float32) * np.float32(uph / h)).astype(np.int64)
        cols = np.round(np.arange(w, dtype=np.float32) * np.float32(upw / w)).astype(np.int64)
        return [(int(r), int(c)) for r in rows for c in cols]


@dataclass(frozen=True)
class InfinityConfig:
    """An Infinity transformer. head_dim = width / heads (128 for the released models)."""

    depth: int
    width: int
    heads: int
    d_vae: int = 32  # bits per transformer token (32; 56 for the 8B's patchified 14-bit VAE)
    text_channels: int = 2048  # Flan-T5-XL's d_model
    text_maxlen: int = 512
    block_chunks: int = 8
    pool_heads: int = 16  # heads of the text pooling (Ct5 // 128 in the released models)
    num_levels: int = 15  # lvl_embed rows
    patchify: bool = False  # the 8B: a token's 56 bits are 2x2 sub-pixels of the 14-bit VAE grid
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be divisible by 4 (2-D RoPE over pairs)")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        if self.width % self.pool_heads:
            raise ValueError(f"width {self.width} is not divisible by the pooling heads {self.pool_heads}")
        if self.patchify and self.d_vae % 4:
            raise ValueError(f"a patchified model's d_vae ({self.d_vae}) is 4 x the VAE's code bits")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return round(4 * self.width / 256) * 256

    @property
    def vocab(self) -> int:
        """Head outputs: two logits per bit (``logits[..., 2j + c]``: bit j taking value c)."""
        return 2 * self.d_vae

    @property
    def code_bits(self) -> int:
        """Channels of the VAE's latent (the BSQ code): d_vae, or d_vae / 4 when patchified."""
        return self.d_vae // 4 if self.patchify else self.d_vae

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InfinityConfig:
        return cls(**d)


#: the released sizes (infinity-spec.md §1)
INFINITY_CONFIGS = {
    "infinity-2b": InfinityConfig(depth=32, width=2048, heads=16, d_vae=32, name="infinity-2b"),
    "infinity-8b": InfinityConfig(depth=40, width=3584, heads=28, d_vae=56, patchify=True, name="infinity-8b"),
}


@dataclass(frozen=True)
class BSQVAEConfig:
    """The BSQ VAE's decoder: ``code_bits`` latent channels, ``ch_mult`` levels (one 2x
    up-sampling per level but the first), base width 128."""

    code_bits: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2  # the decoder runs num_res_blocks + 1 ResBlocks per level
    out_channels: int = 3
    name: str = field(default="", compare=False)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BSQVAEConfig:
        return cls(**{**d, "ch_mult": tuple(d["ch_mult"])})


BSQ_VAE_CONFIGS = {
    "infinity_vae_d32": BSQVAEConfig(code_bits=32, ch_mult=(1, 2, 4, 4, 4), name="infinity_vae_d32"),
    "infinity_vae_d56": BSQVAEConfig(code_bits=14, ch_mult=(1, 2, 4, 4), name="infinity_vae_d56"),
}
