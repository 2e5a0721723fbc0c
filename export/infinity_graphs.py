"""The graph contract of the Infinity family: components, static shapes, and their modules.

One text-to-image generation calls four components:

* ``text_encoder``           input_ids, attention_mask (R, Lt) -> text (R, Lt, Ct5)       once (T5)
* ``infinity_conditioner``   text, text_mask (R, Lt), uncond (R,) -> sos, ada, head_ada, ca_kv   once
* ``infinity_transformer``   x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, fill_* -> logits, new_kv, hidden
                                                                                         once per scale
* ``infinity_decoder``       codes (B, d, H, W) -> image (B, 3, 16 H, 16 W) in [0, 1]

Policies add variants of the per-scale step, as on VAR: ``infinity_transformer_probe`` (also the
self-attention entropy of every block: ToProVAR's probe scale), ``infinity_transformer_layers``
(only a layer set runs), ``infinity_transformer_fastvar`` (FastVAR's pivotal-token pruning in a
baked-in block range, with cached deltas for the pruned positions), ``infinity_transformer_stagevar``
(StageVAR's low-rank scale, :mod:`varrt.export.stagevar`) and ``infinity_transformer_chunks`` (the
step before it, which also returns every chunk's output).

A transformer shape is (rows, tokens, outputs, past, capacity, text): like VAR's, plus the text length
Lt (a bucket, see :func:`varrt.export.text_encoder.text_bucket`). The scale enters only through
``pos`` (level, row, col per token) and ``kv_bias``, so scales with the same shape share a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from varrt.export.bsq_vae import BSQVAE
from varrt.export.graphs import FastVarShape, GraphSpec, StepShape, TensorSpec, ToProVarShape, step_extras
from varrt.export.infinity import Infinity, TextConditioning
from varrt.export.infinity_config import BSQVAEConfig, InfinityConfig
from varrt.export.stagevar import (
    StageVarShape,
    check_chunks,
    infinity_stagevar_step,
    stagevar_inputs,
    stagevar_outputs,
)

#: every graph component of the family, in export order (infinity_graph_module builds each)
INFINITY_COMPONENTS = (
    "text_encoder",
    "infinity_conditioner",
    "infinity_transformer",
    "infinity_transformer_probe",
    "infinity_transformer_layers",
    "infinity_transformer_fastvar",
    "infinity_transformer_toprovar",
    "infinity_transformer_chunks",
    "infinity_transformer_stagevar",
    "infinity_decoder",
)


@dataclass(frozen=True)
class TextStepShape(StepShape):
    """One Infinity transformer call: VAR's :class:`~varrt.export.graphs.StepShape` (rows,
    tokens, outputs, capacity, probe, layers) plus ``text``, the tokens of the prompt bucket."""

    text: int = field(kw_only=True)
    base: ClassVar[str] = "infinity_transformer"

    @property
    def name(self) -> str:
        return f"{super().name}_l{self.text}"


@dataclass(frozen=True)
class InfinityFastVarShape(FastVarShape):
    """One FastVAR call on Infinity: VAR's :class:`~varrt.export.graphs.FastVarShape` (rows,
    tokens, keep, capacity, pruned blocks) plus ``text``, the tokens of the prompt bucket."""

    text: int = field(kw_only=True)
    component: ClassVar[str] = "infinity_transformer_fastvar"

    @property
    def name(self) -> str:
        return f"{super().name}_l{self.text}"


@dataclass(frozen=True)
class InfinityToProVarShape(ToProVarShape):
    """One ToProVAR call on Infinity: VAR's :class:`~varrt.export.graphs.ToProVarShape` plus
    ``text``, the tokens of the prompt bucket."""

    text: int = field(kw_only=True)
    component: ClassVar[str] = "infinity_transformer_toprovar"

    @property
    def name(self) -> str:
        return f"{super().name}_l{self.text}"


@dataclass(frozen=True)
class InfinityStageVarShape(StageVarShape):
    """One StageVAR low-rank call on Infinity: VAR's :class:`~varrt.export.stagevar.StageVarShape`
    (rows, tokens, ranks, capacity, chunk) plus ``text``, the tokens of the prompt bucket."""

    text: int = field(kw_only=True)
    component: ClassVar[str] = "infinity_transformer_stagevar"

    @property
    def name(self) -> str:
        return f"{super().name}_l{self.text}"


def text_encoder_spec(text_channels: int, rows: int, length: int) -> GraphSpec:
    return GraphSpec(
        f"text_encoder_r{rows}_l{length}",
        "text_encoder",
        (TensorSpec("input_ids", (rows, length), "int64"), TensorSpec("attention_mask", (rows, length), "int64")),
        (TensorSpec("text", (rows, length, text_channels), "float32"),),
    )


def _conditioning(cfg: InfinityConfig, r: int, lt: int, dtype: str) -> tuple[TensorSpec, ...]:
    c = cfg.width
    return (
        TensorSpec("sos", (r, c), "float32"),
        TensorSpec("ada", (r, cfg.depth, 6, c), "float32"),
        TensorSpec("head_ada", (r, 2, c), "float32"),
        TensorSpec("ca_kv", (r, cfg.depth, 2, cfg.heads, lt, cfg.head_dim), dtype),
    )


def infinity_conditioner_spec(cfg: InfinityConfig, rows: int, length: int, dtype: str = "float32") -> GraphSpec:
    return GraphSpec(
        f"infinity_conditioner_r{rows}_l{length}",
        "infinity_conditioner",
        (
            TensorSpec("text", (rows, length, cfg.text_channels), "float32"),
            TensorSpec("text_mask", (rows, length), "float32"),
            TensorSpec("uncond", (rows,), "float32"),
        ),
        _conditioning(cfg, rows, length, dtype),
    )


def _tokens_and_conditioning(cfg: InfinityConfig, r: int, n: int, lt: int, dtype: str) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("x", (r, n, cfg.d_vae), "float32"),
        TensorSpec("pos", (r, n, 3), "int64"),
        *_conditioning(cfg, r, lt, dtype),
        TensorSpec("text_bias", (r, lt), "float32"),
    )


def _kv(cfg: InfinityConfig, r: int, t: int, dtype: str, name: str = "kv") -> TensorSpec:
    return TensorSpec(name, (r, cfg.depth, 2, cfg.heads, t, cfg.head_dim), dtype)


def infinity_transformer_spec(cfg: InfinityConfig, shape: TextStepShape, dtype: str = "float32") -> GraphSpec:
    r, n, m, t, lt = shape.rows, shape.tokens, shape.outputs, shape.capacity, shape.text
    extras, blocks = step_extras(cfg, shape)
    return GraphSpec(
        shape.name,
        shape.component,
        (
            *_tokens_and_conditioning(cfg, r, n, lt, dtype),
            _kv(cfg, r, t, dtype),
            TensorSpec("kv_bias", (shape.past,), "float32"),
            TensorSpec("fill_idx", (r, m), "int64"),
            TensorSpec("fill_mask", (r, m), "float32"),
            TensorSpec("restore", (r, m, cfg.width), "float32"),
        ),
        (
            TensorSpec("logits", (r, m, cfg.vocab), "float32"),
            _kv(cfg, r, n, dtype, "new_kv"),
            TensorSpec("hidden", (r, m, cfg.width), "float32"),
            *extras,
        ),
        blocks=blocks,
    )


def infinity_fastvar_spec(cfg: InfinityConfig, shape: InfinityFastVarShape, dtype: str = "float32") -> GraphSpec:
    """FastVAR's step: ``kv_bias`` is per block (a pruned block caches only its k tokens) and
    ``deltas`` holds the SA / CA / FFN residual deltas of every block (R, depth, 3, n, C)."""
    r, n, k, t, lt = shape.rows, shape.tokens, shape.keep, shape.capacity, shape.text
    deltas = (r, cfg.depth, 3, n, cfg.width)
    return GraphSpec(
        shape.name,
        shape.component,
        (
            *_tokens_and_conditioning(cfg, r, n, lt, dtype),
            _kv(cfg, r, t, dtype),
            TensorSpec("kv_bias", (cfg.depth, shape.past), "float32"),
            TensorSpec("keep_rank", (k,), "int64"),
            TensorSpec("deltas", deltas, "float32"),
        ),
        (
            TensorSpec("logits", (r, n, cfg.vocab), "float32"),
            _kv(cfg, r, n, dtype, "new_kv"),
            *((TensorSpec("new_deltas", deltas, "float32"),) if shape.returns_deltas else ()),
        ),
        blocks=shape.blocks,
    )


def infinity_toprovar_spec(cfg: InfinityConfig, shape: InfinityToProVarShape, dtype: str = "float32") -> GraphSpec:
    """ToProVAR's step: one rank input per block after the entropy block, ``kv_bias`` per block."""
    r, n, t, lt = shape.rows, shape.tokens, shape.capacity, shape.text
    ranks = tuple(TensorSpec(name, (k,), "int64") for name, k in zip(shape.rank_names(), shape.keeps))
    return GraphSpec(
        shape.name,
        shape.component,
        (
            *_tokens_and_conditioning(cfg, r, n, lt, dtype),
            _kv(cfg, r, t, dtype),
            TensorSpec("kv_bias", (cfg.depth, shape.past), "float32"),
            *ranks,
        ),
        (TensorSpec("logits", (r, n, cfg.vocab), "float32"), _kv(cfg, r, n, dtype, "new_kv")),
        blocks=shape.blocks,
    )


def infinity_stagevar_spec(cfg: InfinityConfig, shape: InfinityStageVarShape, dtype: str = "float32") -> GraphSpec:
    """StageVAR's low-rank step: ``kv_bias`` is per block over the live prefix (each chunk of an
    earlier low-rank scale cached its own r keys)."""
    r, n, t, lt = shape.rows, shape.tokens, shape.capacity, shape.text
    return GraphSpec(
        shape.name,
        shape.component,
        (
            *_tokens_and_conditioning(cfg, r, n, lt, dtype),
            _kv(cfg, r, t, dtype),
            TensorSpec("kv_bias", (cfg.depth, shape.past), "float32"),
            *stagevar_inputs(cfg.width, shape),
        ),
        stagevar_outputs(
            cfg.width, shape, TensorSpec("logits", (r, n, cfg.vocab), "float32"), _kv(cfg, r, n, dtype, "new_kv")
        ),
        blocks=check_chunks(cfg.depth, shape),
    )


def infinity_step_spec(cfg: InfinityConfig, shape, dtype: str = "float32") -> GraphSpec:
    """The step graph of any Infinity step shape (plain, probe, layer set, chunk outputs, FastVAR,
    ToProVAR, StageVAR)."""
    if isinstance(shape, InfinityFastVarShape):
        return infinity_fastvar_spec(cfg, shape, dtype)
    if isinstance(shape, InfinityToProVarShape):
        return infinity_toprovar_spec(cfg, shape, dtype)
    if isinstance(shape, InfinityStageVarShape):
        return infinity_stagevar_spec(cfg, shape, dtype)
    return infinity_transformer_spec(cfg, shape, dtype)


def infinity_decoder_spec(vcfg: BSQVAEConfig, batch: int, grid: tuple[int, int]) -> GraphSpec:
    h, w = grid
    ds = vcfg.downsample
    return GraphSpec(
        f"infinity_decoder_b{batch}_{h}x{w}",
        "infinity_decoder",
        (TensorSpec("codes", (batch, vcfg.code_bits, h, w), "float32"),),
        (TensorSpec("image", (batch, vcfg.out_channels, h * ds, w * ds), "float32"),),
    )


# ------------------------------------------------------------------------ modules with graph I/O
class InfinityConditionerGraph(nn.Module):
    def __init__(self, model: Infinity) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: Tensor, text_mask: Tensor, uncond: Tensor):
        return tuple(self.model.condition(text, text_mask, uncond))


class InfinityTransformerGraph(nn.Module):
    """The per-scale step; the probe variant also returns the self-attention entropy of every
    block, the layer-set variant runs only ``layers`` (the others add keys and values only), the
    chunk-output variant also returns the residual stream after every chunk (``chunks``: their ends)."""

    def __init__(
        self,
        model: Infinity,
        probe: bool = False,
        layers: tuple[int, ...] | None = None,
        chunks: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.probe, self.layers, self.chunks = model, probe, layers, chunks

    def forward(self, x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, fill_idx, fill_mask, restore):
        cond = TextConditioning(sos, ada, head_ada, ca_kv)
        return self.model.step(
            x, pos, cond, text_bias, kv, kv_bias, fill_idx, fill_mask, restore, self.layers, self.probe, self.chunks
        )


class InfinityStageVarGraph(nn.Module):
    """StageVAR's low-rank step with its chunks baked in (``chunks``: their ends)."""

    def __init__(self, model: Infinity, chunks: tuple[int, ...], returns_state: bool) -> None:
        super().__init__()
        self.model, self.chunks, self.returns_state = model, chunks, returns_state

    def forward(self, x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, gumbel, chunk_restore, *proj):
        cond = TextConditioning(sos, ada, head_ada, ca_kv)
        return infinity_stagevar_step(
            self.model,
            x,
            pos,
            cond,
            text_bias,
            kv,
            kv_bias,
            proj,
            gumbel,
            chunk_restore,
            self.chunks,
            self.returns_state,
        )


class InfinityFastVarGraph(nn.Module):
    """FastVAR's step with the pruned blocks baked in (they are part of the graph's structure)."""

    def __init__(self, model: Infinity, pruned: range, returns_deltas: bool = True) -> None:
        super().__init__()
        self.model, self.pruned, self.returns_deltas = model, pruned, returns_deltas

    def forward(self, x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, keep_rank, deltas):
        cond = TextConditioning(sos, ada, head_ada, ca_kv)
        return self.model.step_fastvar(
            x, pos, cond, text_bias, kv, kv_bias, keep_rank, deltas, self.pruned, self.returns_deltas
        )


class InfinityToProVarGraph(nn.Module):
    """ToProVAR's step with its entropy block baked in; one rank input per later block."""

    def __init__(self, model: Infinity, entropy_block: int) -> None:
        super().__init__()
        self.model, self.entropy_block = model, entropy_block

    def forward(self, x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, *keep_ranks):
        cond = TextConditioning(sos, ada, head_ada, ca_kv)
        return self.model.step_toprovar(x, pos, cond, text_bias, kv, kv_bias, keep_ranks, self.entropy_block)


class InfinityDecoderGraph(nn.Module):
    def __init__(self, vae: BSQVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, codes: Tensor) -> Tensor:
        return self.vae.decode(codes)


def infinity_graph_module(
    component: str,
    model: Infinity,
    vae: BSQVAE,
    text_encoder=None,
    blocks: tuple[int, ...] | None = None,
    outputs: tuple[str, ...] | None = None,
) -> nn.Module:
    """The module whose forward is ``component``'s graph (``text_encoder``: a
    :class:`~varrt.export.text_encoder.TextEncoder`; ``blocks``: the layer set of a layer-set
    graph, the pruned range (first, last) of a FastVAR graph, (entropy block,) of a ToProVAR graph,
    the chunk ends of a chunk-output or StageVAR graph; ``outputs``: the output names a static
    graph keeps, None for all)."""
    if component == "text_encoder":
        if text_encoder is None:
            raise ValueError("the text_encoder graph needs a text encoder (--text-encoder DIR)")
        from varrt.export.text_encoder import TextEncoderGraph

        return TextEncoderGraph(text_encoder.model)
    if component == "infinity_conditioner":
        return InfinityConditionerGraph(model)
    if component in ("infinity_transformer", "infinity_transformer_probe"):
        return InfinityTransformerGraph(model, probe=component == "infinity_transformer_probe")
    structured = ("layers", "fastvar", "toprovar", "chunks", "stagevar")
    if component in {f"infinity_transformer_{v}" for v in structured} and blocks is None:
        raise ValueError(f"a {component} graph needs its block structure")
    if component == "infinity_transformer_layers":
        return InfinityTransformerGraph(model, layers=tuple(blocks))
    if component == "infinity_transformer_fastvar":
        return InfinityFastVarGraph(model, range(*blocks), outputs is None or "new_deltas" in outputs)
    if component == "infinity_transformer_toprovar":
        return InfinityToProVarGraph(model, blocks[0])
    if component == "infinity_transformer_chunks":
        return InfinityTransformerGraph(model, chunks=tuple(blocks))
    if component == "infinity_transformer_stagevar":
        return InfinityStageVarGraph(model, tuple(blocks), outputs is None or "new_kv" in outputs)
    if component == "infinity_decoder":
        return InfinityDecoderGraph(vae)
    raise ValueError(f"unknown Infinity component {component!r}")
