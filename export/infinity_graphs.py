"""The graph contract of the Infinity family: components, static shapes, and their modules.

One text-to-image generation calls four components:

* ``text_encoder``           input_ids, attention_mask (R, Lt) -> text (R, Lt, Ct5)       once (T5)
* ``infinity_conditioner``   text, text_mask (R, Lt), uncond (R,) -> sos, ada, head_ada, ca_kv   once
* ``infinity_transformer``   x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, fill_* -> logits, new_kv, hidden
                                                                                         once per scale
* ``infinity_decoder``       codes (B, d, H, W) -> image (B, 3, 16 H, 16 W) in [0, 1]

Policies add variants of the per-scale step, as on VAR: ``infinity_transformer_probe`` (also the
self-attention entropy of every block: ToProVAR's probe scale), ``infinity_transformer_layers``
(only a layer set runs) and ``infinity_transformer_fastvar`` (FastVAR's pivotal-token pruning in a
baked-in block range, with cached deltas for the pruned positions).

A transformer shape is (rows, tokens, outputs, capacity, text): like VAR's, plus the text length
Lt (a bucket, see :func:`varrt.export.text_encoder.text_bucket`). The scale enters only through
``pos`` (level, row, col per token) and ``kv_bias``, so scales with the same shape share a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from varrt.export.bsq_vae import BSQVAE
from varrt.export.graphs import FastVarShape, GraphSpec, StepShape, TensorSpec
from varrt.export.infinity import Infinity, TextConditioning
from varrt.export.infinity_config import BSQVAEConfig, InfinityConfig

#: every graph component of the family, in export order (infinity_graph_module builds each)
INFINITY_COMPONENTS = (
    "text_encoder",
    "infinity_conditioner",
    "infinity_transformer",
    "infinity_transformer_probe",
    "infinity_transformer_layers",
    "infinity_transformer_fastvar",
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
    return GraphSpec(
        shape.name,
        shape.component,
        (
            *_tokens_and_conditioning(cfg, r, n, lt, dtype),
            _kv(cfg, r, t, dtype),
            TensorSpec("kv_bias", (t,), "float32"),
            TensorSpec("fill_idx", (r, m), "int64"),
            TensorSpec("fill_mask", (r, m), "float32"),
            TensorSpec("restore", (r, m, cfg.width), "float32"),
        ),
        (
            TensorSpec("logits", (r, m, cfg.vocab), "float32"),
            _kv(cfg, r, n, dtype, "new_kv"),
            TensorSpec("hidden", (r, m, cfg.width), "float32"),
            *((TensorSpec("entropy", (r, cfg.depth, n), "float32"),) if shape.probe else ()),
        ),
        blocks=shape.layers,
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
            TensorSpec("kv_bias", (cfg.depth, t), "float32"),
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


def infinity_step_spec(
    cfg: InfinityConfig, shape: TextStepShape | InfinityFastVarShape, dtype: str = "float32"
) -> GraphSpec:
    """The step graph of any Infinity step shape (plain, probe, layer set, FastVAR)."""
    if isinstance(shape, InfinityFastVarShape):
        return infinity_fastvar_spec(cfg, shape, dtype)
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
    block, the layer-set variant runs only ``layers`` (the others add keys and values only)."""

    def __init__(self, model: Infinity, probe: bool = False, layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.model, self.probe, self.layers = model, probe, layers

    def forward(self, x, pos, sos, ada, head_ada, ca_kv, text_bias, kv, kv_bias, fill_idx, fill_mask, restore):
        cond = TextConditioning(sos, ada, head_ada, ca_kv)
        return self.model.step(
            x, pos, cond, text_bias, kv, kv_bias, fill_idx, fill_mask, restore, self.layers, self.probe
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
    returns_deltas: bool = True,
) -> nn.Module:
    """The module whose forward is ``component``'s graph (``text_encoder``: a
    :class:`~varrt.export.text_encoder.TextEncoder`; ``blocks``: the layer set of a layer-set
    graph, the pruned range (first, last) of a FastVAR graph)."""
    if component == "text_encoder":
        if text_encoder is None:
            raise ValueError("the text_encoder graph needs a text encoder (--text-encoder DIR)")
        from varrt.export.text_encoder import TextEncoderGraph

        return TextEncoderGraph(text_encoder.model)
    if component == "infinity_conditioner":
        return InfinityConditionerGraph(model)
    if component in ("infinity_transformer", "infinity_transformer_probe"):
        return InfinityTransformerGraph(model, probe=component == "infinity_transformer_probe")
    if component == "infinity_transformer_layers":
        if blocks is None:
            raise ValueError("a layer-set graph needs its layer set")
        return InfinityTransformerGraph(model, layers=tuple(blocks))
    if component == "infinity_transformer_fastvar":
        if blocks is None:
            raise ValueError("a FastVAR graph needs its pruned block range")
        return InfinityFastVarGraph(model, range(*blocks), returns_deltas)
    if component == "infinity_decoder":
        return InfinityDecoderGraph(vae)
    raise ValueError(f"unknown Infinity component {component!r}")
