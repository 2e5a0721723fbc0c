"""The graph contract: every component call, by name, with its static input and output tensors.

One generation calls three components:

* ``conditioner``  labels (2B,) -> sos, ada, head_ada            once per generation
* ``transformer``  x, pos_idx, sos, ada, head_ada, kv, kv_bias -> logits, new_kv    once per scale
* ``decoder``      f_hat (B, Cvae, s, s) -> image (B, 3, 16 s, 16 s) in [0, 1]

A transformer graph is fixed by (rows, tokens, kv capacity): rows is 2B with CFG and B with the
conditional branch only; tokens is the scale's budget; capacity is the KV slots of the plan. Scales
that share those three numbers share a graph: the scale itself only enters through ``pos_idx``
(which positions are computed) and ``kv_bias`` (which cache slots are live).

Exporter, engines and runtime all read shapes from here, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from varrt.export.configs import VARConfig, VQVAEConfig
from varrt.export.var import VAR, Conditioning
from varrt.export.vqvae import VQVAE

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

#: every graph component, in export order (graph_module builds each)
COMPONENTS = (
    "conditioner",
    "transformer",
    "transformer_probe",
    "transformer_layers",
    "transformer_fastvar",
    "decoder",
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def check(self, t: Tensor, graph: str) -> None:
        if tuple(t.shape) != self.shape or t.dtype != self.torch_dtype:
            raise ValueError(
                f"{graph}: input {self.name!r} is {tuple(t.shape)} {DTYPE_NAMES.get(t.dtype, t.dtype)}, "
                f"the graph expects {self.shape} {self.dtype}"
            )


#: the version of the exported graphs, part of every export key: bump it when a graph's inputs,
#: outputs, meaning or ops change, so that no cached export of an older version is reused
#: (2: FastVAR's pruned scales return no deltas; 3: token gathers/scatters as GatherND/ScatterND;
#: 4: FastVAR's pivotal tokens by a TopK of at most N / 2, in index order: TensorRT's TopK limit)
GRAPH_CONTRACT = 4


@dataclass(frozen=True)
class GraphSpec:
    name: str
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: static structure beyond shapes, part of what the engine compiled: FastVAR's pruned block
    #: range [first, last), or a layer-set graph's blocks that run
    blocks: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "component": self.component,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.blocks is not None:
            d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        return cls(
            d["name"],
            d["component"],
            tuple(map(TensorSpec.from_dict, d["inputs"])),
            tuple(map(TensorSpec.from_dict, d["outputs"])),
            tuple(d["blocks"]) if d.get("blocks") is not None else None,
        )

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    @property
    def structure(self) -> tuple:
        """What fixes the module behind a graph (shapes aside): an eager engine keeps one per structure."""
        return self.component, self.blocks, tuple(t.name for t in self.outputs)

    @property
    def returns_deltas(self) -> bool:
        return any(t.name == "new_deltas" for t in self.outputs)

    def check_feeds(self, feeds: dict[str, Tensor]) -> None:
        names = {t.name for t in self.inputs}
        if set(feeds) != names:
            raise ValueError(f"{self.name}: feeds {sorted(feeds)} do not match the inputs {sorted(names)}")
        for spec in self.inputs:
            spec.check(feeds[spec.name], self.name)


@dataclass(frozen=True)
class StepShape:
    """The static shape of one transformer call: ``rows`` (2B with CFG, B without), ``tokens``
    computed, ``outputs`` positions returned (the whole scale), ``capacity`` KV slots."""

    rows: int
    tokens: int
    outputs: int
    capacity: int
    probe: bool = False  # also return the attention entropy (ToProVAR's probe scale): another graph
    layers: tuple[int, ...] | None = None  # the blocks that run (a layer set); None = all: another graph
    base: ClassVar[str] = "transformer"  # the family's plain step component; _probe / _layers derive from it

    def __post_init__(self) -> None:
        if self.probe and self.layers is not None:
            raise ValueError("a probe graph runs every block (its entropy is per block)")

    @property
    def component(self) -> str:
        if self.layers is not None:
            return f"{self.base}_layers"
        return f"{self.base}_probe" if self.probe else self.base

    @property
    def name(self) -> str:
        return f"{self.component}_r{self.rows}_n{self.tokens}_m{self.outputs}_t{self.capacity}"


@dataclass(frozen=True)
class FastVarShape:
    """The static shape of one FastVAR call: ``tokens`` of the scale, ``keep`` per pruned sub-block."""

    rows: int
    tokens: int
    keep: int
    capacity: int
    blocks: tuple[int, int]  # the pruned blocks [first, last): part of the graph's structure
    # only the reference scale's deltas are read (by the pruned scales after it): the other calls
    # leave them out, which spares writing (R, depth, 2 or 3, N, C) floats per call
    returns_deltas: bool = True
    component: ClassVar[str] = "transformer_fastvar"

    @property
    def name(self) -> str:
        a, b = self.blocks
        tail = "" if self.returns_deltas else "_nodeltas"
        return f"{self.component}_b{a}-{b}_r{self.rows}_n{self.tokens}_k{self.keep}_t{self.capacity}{tail}"


def conditioner_name(rows: int) -> str:
    return f"conditioner_r{rows}"


def decoder_name(batch: int, side: int | None = None) -> str:
    return f"decoder_b{batch}" if side is None else f"decoder_b{batch}_s{side}"


def conditioner_spec(cfg: VARConfig, rows: int) -> GraphSpec:
    c = cfg.width
    return GraphSpec(
        conditioner_name(rows),
        "conditioner",
        (TensorSpec("labels", (rows,), "int64"),),
        (
            TensorSpec("sos", (rows, c), "float32"),
            TensorSpec("ada", (rows, cfg.depth, 6, c), "float32"),
            TensorSpec("head_ada", (rows, 2, c), "float32"),
        ),
    )


def _cond_and_cache(cfg: VARConfig, r: int, t: int, dtype: str, bias_shape: tuple[int, ...]) -> tuple[TensorSpec, ...]:
    c = cfg.width
    return (
        TensorSpec("sos", (r, c), "float32"),
        TensorSpec("ada", (r, cfg.depth, 6, c), "float32"),
        TensorSpec("head_ada", (r, 2, c), "float32"),
        TensorSpec("kv", (r, cfg.depth, 2, cfg.heads, t, cfg.head_dim), dtype),
        TensorSpec("kv_bias", bias_shape, "float32"),
    )


def transformer_spec(cfg: VARConfig, shape: StepShape, dtype: str = "float32") -> GraphSpec:
    r, n, m, t = shape.rows, shape.tokens, shape.outputs, shape.capacity
    return GraphSpec(
        shape.name,
        shape.component,
        (
            TensorSpec("x", (r, n, cfg.latent_channels), "float32"),
            TensorSpec("pos_idx", (r, n), "int64"),
            *_cond_and_cache(cfg, r, t, dtype, (t,)),
            TensorSpec("fill_idx", (r, m), "int64"),
            TensorSpec("fill_mask", (r, m), "float32"),
            TensorSpec("restore", (r, m, cfg.width), "float32"),
        ),
        (
            TensorSpec("logits", (r, m, cfg.vocab_size), "float32"),
            TensorSpec("new_kv", (r, cfg.depth, 2, cfg.heads, n, cfg.head_dim), dtype),
            TensorSpec("hidden", (r, m, cfg.width), "float32"),
            *((TensorSpec("entropy", (r, cfg.depth, n), "float32"),) if shape.probe else ()),
        ),
        blocks=shape.layers,
    )


def fastvar_spec(cfg: VARConfig, shape: FastVarShape, dtype: str = "float32") -> GraphSpec:
    r, n, k, t = shape.rows, shape.tokens, shape.keep, shape.capacity
    return GraphSpec(
        shape.name,
        shape.component,
        (
            TensorSpec("x", (r, n, cfg.latent_channels), "float32"),
            TensorSpec("pos_idx", (r, n), "int64"),
            *_cond_and_cache(cfg, r, t, dtype, (cfg.depth, t)),
            TensorSpec("keep_rank", (k,), "int64"),
            TensorSpec("deltas", (r, cfg.depth, 2, n, cfg.width), "float32"),
        ),
        (
            TensorSpec("logits", (r, n, cfg.vocab_size), "float32"),
            TensorSpec("new_kv", (r, cfg.depth, 2, cfg.heads, n, cfg.head_dim), dtype),
            *((TensorSpec("new_deltas", (r, cfg.depth, 2, n, cfg.width), "float32"),) if shape.returns_deltas else ()),
        ),
        blocks=shape.blocks,
    )


def step_spec(cfg: VARConfig, shape: StepShape | FastVarShape, dtype: str = "float32") -> GraphSpec:
    return transformer_spec(cfg, shape, dtype) if isinstance(shape, StepShape) else fastvar_spec(cfg, shape, dtype)


def decoder_spec(vcfg: VQVAEConfig, batch: int, side: int | None = None) -> GraphSpec:
    s = side or vcfg.patch_nums[-1]
    px = s * vcfg.downsample
    return GraphSpec(
        decoder_name(batch, side),
        "decoder",
        (TensorSpec("f_hat", (batch, vcfg.z_channels, s, s), "float32"),),
        (TensorSpec("image", (batch, vcfg.in_channels, px, px), "float32"),),
    )


# ------------------------------------------------------------------------ modules with graph I/O
class ConditionerGraph(nn.Module):
    def __init__(self, var: VAR) -> None:
        super().__init__()
        self.var = var

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(self.var.condition(labels))


class TransformerGraph(nn.Module):
    """The per-scale step; the probe variant also returns the attention entropy of every block, the
    layer-set variant runs only ``layers`` (the others add keys and values only)."""

    def __init__(self, var: VAR, probe: bool = False, layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.var, self.probe, self.layers = var, probe, layers

    def forward(self, x, pos_idx, sos, ada, head_ada, kv, kv_bias, fill_idx, fill_mask, restore):
        cond = Conditioning(sos, ada, head_ada)
        return self.var.step(x, pos_idx, cond, kv, kv_bias, fill_idx, fill_mask, restore, self.probe, self.layers)


class FastVarGraph(nn.Module):
    """FastVAR's step with the pruned blocks baked in (they are part of the graph's structure)."""

    def __init__(self, var: VAR, pruned: range, returns_deltas: bool = True) -> None:
        super().__init__()
        self.var, self.pruned, self.returns_deltas = var, pruned, returns_deltas

    def forward(self, x, pos_idx, sos, ada, head_ada, kv, kv_bias, keep_rank, deltas):
        cond = Conditioning(sos, ada, head_ada)
        return self.var.step_fastvar(x, pos_idx, cond, kv, kv_bias, keep_rank, deltas, self.pruned, self.returns_deltas)


class DecoderGraph(nn.Module):
    def __init__(self, vqvae: VQVAE) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, f_hat: Tensor) -> Tensor:
        return self.vqvae.decode(f_hat)


def graph_module(
    component: str,
    var: VAR | None,
    vqvae: VQVAE | None,
    blocks: tuple[int, ...] | None = None,
    returns_deltas: bool = True,
) -> nn.Module:
    if component == "conditioner":
        return ConditionerGraph(var)
    if component in ("transformer", "transformer_probe"):
        return TransformerGraph(var, probe=component == "transformer_probe")
    if component == "transformer_layers":
        if blocks is None:
            raise ValueError("a layer-set graph needs its layer set")
        return TransformerGraph(var, layers=tuple(blocks))
    if component == "transformer_fastvar":
        if blocks is None:
            raise ValueError("a FastVAR graph needs its pruned block range")
        return FastVarGraph(var, range(*blocks), returns_deltas)
    if component == "decoder":
        return DecoderGraph(vqvae)
    raise ValueError(f"unknown component {component!r}")
