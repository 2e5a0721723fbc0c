"""The graph contract: every component call, by name, with its static input and output tensors.

One generation calls three components:

* ``conditioner``  labels (2B,) -> sos, ada, head_ada            once per generation
* ``transformer``  x, pos_idx, sos, ada, head_ada, kv, kv_bias -> logits, new_kv    once per scale
* ``decoder``      f_hat (B, Cvae, s, s) -> image (B, 3, 16 s, 16 s) in [0, 1]

Policies add variants of the per-scale step: ``transformer_probe`` (an entropy probe),
``transformer_layers`` (a layer set), ``transformer_fastvar`` (FastVAR's pruning),
``transformer_toprovar`` (ToProVAR's in-graph selection), ``transformer_stagevar`` (StageVAR's
low-rank scale: every chunk of blocks on random token mixtures, restored after each chunk) and
``transformer_chunks`` (the step before it, which also returns every chunk's output).

A transformer graph is fixed by (rows, tokens, outputs, past, kv capacity): rows is 2B with CFG
and B with one branch only; tokens is the scale's budget; past is the live prefix of
the cache the scale reads; capacity is the KV slots of the plan (the fixed buffer). Scales that
share those numbers share a graph: the scale itself only enters through ``pos_idx`` (which
positions are computed) and ``kv_bias`` (which slots of the live prefix are live).

Exporter, engines and runtime all read shapes from here, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    "transformer_toprovar",
    "transformer_chunks",
    "transformer_stagevar",
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
#: 4: FastVAR's pivotal tokens by a TopK of at most N / 2, in index order: TensorRT's TopK limit;
#: 5: ToProVAR's in-graph selection, the transformer_toprovar graphs;
#: 6: ``kv_bias`` covers the live prefix (P slots) the graph reads from the fixed-capacity ``kv``,
#: and attention adds the past's and the new keys' parts instead of concatenating the keys;
#: 7: StageVAR's low-rank and chunk-output step graphs;
#: 8: T5 traced with transformers' default attention (sdpa), as the official code loads it)
GRAPH_CONTRACT = 8


@dataclass(frozen=True)
class GraphSpec:
    name: str
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: static structure beyond shapes, part of what the engine compiled: FastVAR's pruned block
    #: range [first, last), a layer-set graph's blocks that run, or ToProVAR's entropy block
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
        return "new_deltas" in self.output_names

    @property
    def output_names(self) -> tuple[str, ...]:
        """What an eager module of this graph returns, in order (static graphs may leave a
        component's optional outputs out: FastVAR's deltas, StageVAR's state)."""
        return tuple(t.name for t in self.outputs)

    def check_feeds(self, feeds: dict[str, Tensor]) -> None:
        names = {t.name for t in self.inputs}
        if set(feeds) != names:
            raise ValueError(f"{self.name}: feeds {sorted(feeds)} do not match the inputs {sorted(names)}")
        for spec in self.inputs:
            spec.check(feeds[spec.name], self.name)


@dataclass(frozen=True)
class StepShape:
    """The static shape of one transformer call: ``rows`` (2B with CFG, B without), ``tokens``
    computed, ``outputs`` positions returned (the whole scale), ``capacity`` KV slots of the buffer,
    ``past`` the live prefix the call reads (the slots earlier scales filled; at least 1, so that
    no input is empty: the first scale reads one masked slot)."""

    rows: int
    tokens: int
    outputs: int
    capacity: int
    probe: bool = False  # also return the attention entropy (ToProVAR's probe scale): another graph
    layers: tuple[int, ...] | None = None  # the blocks that run (a layer set); None = all: another graph
    #: also return the residual stream after every chunk of ``chunk`` blocks (the scale before a
    #: StageVAR low-rank scale, whose restoration reads them): another graph
    chunk: int | None = None
    past: int = field(kw_only=True)
    base: ClassVar[str] = "transformer"  # the family's plain step component; _probe / _layers / _chunks derive from it

    def __post_init__(self) -> None:
        if sum((self.probe, self.layers is not None, self.chunk is not None)) > 1:
            raise ValueError("a step graph is one of: plain, probe, layer set, chunk outputs")
        check_past(self.past, self.capacity)

    @property
    def component(self) -> str:
        if self.layers is not None:
            return f"{self.base}_layers"
        if self.chunk is not None:
            return f"{self.base}_chunks"
        return f"{self.base}_probe" if self.probe else self.base

    @property
    def name(self) -> str:
        tail = f"_c{self.chunk}" if self.chunk is not None else ""
        return f"{self.component}_r{self.rows}_n{self.tokens}_m{self.outputs}_p{self.past}_t{self.capacity}{tail}"


def check_past(past: int, capacity: int) -> None:
    if not 1 <= past <= capacity:
        raise ValueError(f"the live prefix ({past} slots) must be between 1 and the KV capacity ({capacity})")


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
    past: int = field(kw_only=True)  # the live prefix the call reads (see StepShape)
    component: ClassVar[str] = "transformer_fastvar"

    def __post_init__(self) -> None:
        check_past(self.past, self.capacity)

    @property
    def name(self) -> str:
        a, b = self.blocks
        tail = "" if self.returns_deltas else "_nodeltas"
        return f"{self.component}_b{a}-{b}_r{self.rows}_n{self.tokens}_k{self.keep}_p{self.past}_t{self.capacity}{tail}"

    def live(self, depth: int) -> tuple[int, ...]:
        """Per block, the KV slots of the call that hold keys (a pruned block's first ``keep``)."""
        a, b = self.blocks
        return tuple(self.keep if a <= i < b else self.tokens for i in range(depth))

    def rank_feeds(self, device: torch.device | None = None) -> dict[str, Tensor]:
        """The rank inputs that fix the kept counts (their shapes; the values are the ranks 0..k-1)."""
        return {"keep_rank": torch.arange(self.keep, device=device)}


@dataclass(frozen=True)
class ToProVarShape:
    """The static shape of one ToProVAR call: every ``tokens`` of the scale run the blocks up to
    ``entropy_block``; block ``entropy_block + 1 + j`` runs ``keeps[j]`` of them."""

    rows: int
    tokens: int
    keeps: tuple[int, ...]  # tokens computed in each block after the entropy block
    capacity: int
    entropy_block: int  # the block whose attention entropy ranks the tokens: part of the structure
    past: int = field(kw_only=True)  # the live prefix the call reads (see StepShape)
    component: ClassVar[str] = "transformer_toprovar"

    def __post_init__(self) -> None:
        check_past(self.past, self.capacity)

    @property
    def blocks(self) -> tuple[int]:
        return (self.entropy_block,)

    @property
    def name(self) -> str:
        runs: list[list[int]] = []
        for k in self.keeps:  # run-length: 64x15 for fifteen blocks of 64
            if runs and runs[-1][0] == k:
                runs[-1][1] += 1
            else:
                runs.append([k, 1])
        keeps = "-".join(f"{k}x{c}" if c > 1 else str(k) for k, c in runs)
        head = f"{self.component}_e{self.entropy_block}_r{self.rows}_n{self.tokens}"
        return f"{head}_k{keeps}_p{self.past}_t{self.capacity}"

    def rank_names(self) -> list[str]:
        return [f"keep_rank_{self.entropy_block + 1 + j}" for j in range(len(self.keeps))]

    def live(self, depth: int) -> tuple[int, ...]:
        return (self.tokens,) * (self.entropy_block + 1) + self.keeps

    def rank_feeds(self, device: torch.device | None = None) -> dict[str, Tensor]:
        return {name: torch.arange(k, device=device) for name, k in zip(self.rank_names(), self.keeps)}


def chunk_ends(depth: int, chunk: int) -> tuple[int, ...]:
    """The (exclusive) last block of every chunk of ``chunk`` blocks: a chunked graph's structure."""
    return tuple(min(end, depth) for end in range(chunk, depth + chunk, chunk))


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
    """Conditioning and cache inputs: the whole fixed-capacity ``kv`` (T slots, bound at one
    address for a generation) and ``kv_bias`` over the live prefix the call reads."""
    c = cfg.width
    return (
        TensorSpec("sos", (r, c), "float32"),
        TensorSpec("ada", (r, cfg.depth, 6, c), "float32"),
        TensorSpec("head_ada", (r, 2, c), "float32"),
        TensorSpec("kv", (r, cfg.depth, 2, cfg.heads, t, cfg.head_dim), dtype),
        TensorSpec("kv_bias", bias_shape, "float32"),
    )


def step_extras(cfg, shape: StepShape) -> tuple[tuple[TensorSpec, ...], tuple[int, ...] | None]:
    """The outputs a step variant adds to the plain step's, and its static block structure (a
    layer set, or the chunk ends of a chunk-output graph); shared by both families."""
    r, n = shape.rows, shape.tokens
    if shape.chunk is not None:
        ends = chunk_ends(cfg.depth, shape.chunk)
        return (TensorSpec("chunk_hidden", (r, len(ends), n, cfg.width), "float32"),), ends
    if shape.probe:
        return (TensorSpec("entropy", (r, cfg.depth, n), "float32"),), None
    return (), shape.layers


def transformer_spec(cfg: VARConfig, shape: StepShape, dtype: str = "float32") -> GraphSpec:
    r, n, m, t = shape.rows, shape.tokens, shape.outputs, shape.capacity
    extras, blocks = step_extras(cfg, shape)
    return GraphSpec(
        shape.name,
        shape.component,
        (
            TensorSpec("x", (r, n, cfg.latent_channels), "float32"),
            TensorSpec("pos_idx", (r, n), "int64"),
            *_cond_and_cache(cfg, r, t, dtype, (shape.past,)),
            TensorSpec("fill_idx", (r, m), "int64"),
            TensorSpec("fill_mask", (r, m), "float32"),
            TensorSpec("restore", (r, m, cfg.width), "float32"),
        ),
        (
            TensorSpec("logits", (r, m, cfg.vocab_size), "float32"),
            TensorSpec("new_kv", (r, cfg.depth, 2, cfg.heads, n, cfg.head_dim), dtype),
            TensorSpec("hidden", (r, m, cfg.width), "float32"),
            *extras,
        ),
        blocks=blocks,
    )


def fastvar_spec(cfg: VARConfig, shape: FastVarShape, dtype: str = "float32") -> GraphSpec:
    r, n, k, t = shape.rows, shape.tokens, shape.keep, shape.capacity
    return GraphSpec(
        shape.name,
        shape.component,
        (
            TensorSpec("x", (r, n, cfg.latent_channels), "float32"),
            TensorSpec("pos_idx", (r, n), "int64"),
            *_cond_and_cache(cfg, r, t, dtype, (cfg.depth, shape.past)),
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


def toprovar_spec(cfg: VARConfig, shape: ToProVarShape, dtype: str = "float32") -> GraphSpec:
    """ToProVAR's step: one rank input per block after the entropy block (its length is that
    block's kept count), ``kv_bias`` per block (a block caches only its computed tokens)."""
    r, n, t = shape.rows, shape.tokens, shape.capacity
    ranks = tuple(TensorSpec(name, (k,), "int64") for name, k in zip(shape.rank_names(), shape.keeps))
    return GraphSpec(
        shape.name,
        shape.component,
        (
            TensorSpec("x", (r, n, cfg.latent_channels), "float32"),
            TensorSpec("pos_idx", (r, n), "int64"),
            *_cond_and_cache(cfg, r, t, dtype, (cfg.depth, shape.past)),
            *ranks,
        ),
        (
            TensorSpec("logits", (r, n, cfg.vocab_size), "float32"),
            TensorSpec("new_kv", (r, cfg.depth, 2, cfg.heads, n, cfg.head_dim), dtype),
        ),
        blocks=shape.blocks,
    )


def step_spec(cfg: VARConfig, shape, dtype: str = "float32") -> GraphSpec:
    """The step graph of any VAR step shape (plain and its variants, FastVAR, ToProVAR, StageVAR)."""
    from varrt.export.stagevar import StageVarShape, stagevar_spec

    if isinstance(shape, StageVarShape):
        return stagevar_spec(cfg, shape, dtype)
    if isinstance(shape, ToProVarShape):
        return toprovar_spec(cfg, shape, dtype)
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
    layer-set variant runs only ``layers`` (the others add keys and values only), the chunk-output
    variant also returns the residual stream after every chunk (``chunks``: their ends)."""

    def __init__(
        self,
        var: VAR,
        probe: bool = False,
        layers: tuple[int, ...] | None = None,
        chunks: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.var, self.probe, self.layers, self.chunks = var, probe, layers, chunks

    def forward(self, x, pos_idx, sos, ada, head_ada, kv, kv_bias, fill_idx, fill_mask, restore):
        cond = Conditioning(sos, ada, head_ada)
        return self.var.step(
            x, pos_idx, cond, kv, kv_bias, fill_idx, fill_mask, restore, self.probe, self.layers, self.chunks
        )


class FastVarGraph(nn.Module):
    """FastVAR's step with the pruned blocks baked in (they are part of the graph's structure)."""

    def __init__(self, var: VAR, pruned: range, returns_deltas: bool = True) -> None:
        super().__init__()
        self.var, self.pruned, self.returns_deltas = var, pruned, returns_deltas

    def forward(self, x, pos_idx, sos, ada, head_ada, kv, kv_bias, keep_rank, deltas):
        cond = Conditioning(sos, ada, head_ada)
        return self.var.step_fastvar(x, pos_idx, cond, kv, kv_bias, keep_rank, deltas, self.pruned, self.returns_deltas)


class ToProVarGraph(nn.Module):
    """ToProVAR's step with its entropy block baked in; one rank input per later block."""

    def __init__(self, var: VAR, entropy_block: int) -> None:
        super().__init__()
        self.var, self.entropy_block = var, entropy_block

    def forward(self, x, pos_idx, sos, ada, head_ada, kv, kv_bias, *keep_ranks):
        cond = Conditioning(sos, ada, head_ada)
        return self.var.step_toprovar(x, pos_idx, cond, kv, kv_bias, keep_ranks, self.entropy_block)


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
    outputs: tuple[str, ...] | None = None,
) -> nn.Module:
    """The module whose forward is ``component``'s graph; ``blocks`` its static block structure,
    ``outputs`` the output names a static graph keeps (None: all, as the component is traced)."""
    if component == "conditioner":
        return ConditionerGraph(var)
    if component in ("transformer", "transformer_probe"):
        return TransformerGraph(var, probe=component == "transformer_probe")
    structured = (
        "transformer_layers",
        "transformer_fastvar",
        "transformer_toprovar",
        "transformer_chunks",
        "transformer_stagevar",
    )
    if component in structured and blocks is None:
        raise ValueError(f"a {component} graph needs its block structure")
    if component == "transformer_layers":
        return TransformerGraph(var, layers=tuple(blocks))
    if component == "transformer_fastvar":
        return FastVarGraph(var, range(*blocks), outputs is None or "new_deltas" in outputs)
    if component == "transformer_toprovar":
        return ToProVarGraph(var, blocks[0])
    if component == "transformer_chunks":
        return TransformerGraph(var, chunks=tuple(blocks))
    if component == "transformer_stagevar":
        from varrt.export.stagevar import StageVarGraph

        return StageVarGraph(var, tuple(blocks), outputs is None or "new_kv" in outputs)
    if component == "decoder":
        return DecoderGraph(vqvae)
    raise ValueError(f"unknown component {component!r}")
