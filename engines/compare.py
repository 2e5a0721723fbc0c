"""Numerical comparison of two engines on the same graphs and inputs (export validation, `varrt compare`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from varrt.engines.base import Engine
from varrt.export.graphs import GraphSpec


@dataclass(frozen=True)
class Difference:
    graph: str
    output: str
    max_abs: float
    rel: float  # max |candidate - reference| / max |reference|, over finite values
    non_finite: str = ""  # NaN/Inf counts per engine ("" when both outputs are finite)

    def ok(self, tol: float) -> bool:
        return not self.non_finite and self.rel <= tol


def non_finite(named: dict[str, Tensor]) -> str:
    """ "ort: 3 NaN, 1 Inf; torch: 3 NaN" for the engines whose tensor is not all finite ("" if all are)."""
    parts = []
    for who, t in named.items():
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if nan or inf:
            parts.append(f"{who}: " + ", ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "Inf")) if n))
    return "; ".join(parts)


#: T5's pad and end-of-sequence token ids (flan-t5 and the tests' tiny T5 alike)
T5_PAD, T5_EOS = 0, 1
#: token ids below this are in every T5 vocabulary (the tests' tiny one has 41)
SAFE_VOCAB = 32


def random_feeds(
    graph: GraphSpec, total_tokens: int, num_classes: int, seed: int = 0, vocab: int | None = None
) -> dict[str, Tensor]:
    """Plausible random inputs for any graph of either family's contract (valid labels and
    positions, live KV slots in every row). Text inputs look like prompts: each row has a random
    length, its tokens are ids of a ``vocab``-sized T5 vocabulary (default: ids every T5 has)
    followed by EOS and padding, and every text mask or bias of the graph covers that prefix."""
    g = torch.Generator().manual_seed(seed)
    shapes = {t.name: t.shape for t in graph.inputs}
    text = next((shapes[n] for n in ("input_ids", "text_mask", "text_bias") if n in shapes), None)
    if text is not None:
        rows, lt = text
        lengths = torch.randint(1, lt + 1, (rows,), generator=g)
        prefix = torch.arange(lt).view(1, lt) < lengths.view(rows, 1)
    feeds = {}
    for t in graph.inputs:
        if t.name == "input_ids":
            ids = torch.randint(2, vocab or SAFE_VOCAB, t.shape, generator=g)
            ids[torch.arange(lt).view(1, lt) == (lengths - 1).view(rows, 1)] = T5_EOS
            feeds[t.name] = torch.where(prefix, ids, T5_PAD)
        elif t.name in ("attention_mask", "text_mask"):
            feeds[t.name] = prefix.to(t.torch_dtype)
        elif t.name == "text_bias":
            feeds[t.name] = torch.where(prefix, 0.0, -torch.inf)
        elif t.name == "uncond":  # Infinity: rows that take the learned unconditional text
            feeds[t.name] = torch.randint(0, 2, t.shape, generator=g).float()
        elif t.name == "labels":
            feeds[t.name] = torch.randint(0, num_classes + 1, t.shape, generator=g)
        elif t.name == "pos_idx":
            rows, n = t.shape
            feeds[t.name] = torch.stack(
                [torch.randperm(total_tokens, generator=g)[:n].sort().values for _ in range(rows)]
            )
        elif t.name == "pos":  # Infinity: (level, row, col); level 0 would be the start token
            rows, n, _ = t.shape
            feeds[t.name] = torch.cat(
                (torch.ones(rows, n, 1, dtype=torch.long), torch.randint(0, 16, (rows, n, 2), generator=g)), -1
            )
        elif t.name == "fill_idx":
            feeds[t.name] = torch.randint(0, shapes["x"][1], t.shape, generator=g)
        elif t.name == "fill_mask":
            feeds[t.name] = (torch.rand(t.shape, generator=g) < 0.7).float()
        elif t.name.startswith("keep_rank"):  # FastVAR's keep_rank, ToProVAR's keep_rank_<block>
            feeds[t.name] = torch.arange(t.shape[0])
        elif t.name == "kv_bias":
            live = torch.rand(t.shape, generator=g) < 0.5
            live[..., 0] = True  # a query with nothing to attend to would be NaN in every backend
            feeds[t.name] = torch.where(live, 0.0, -torch.inf)
        else:
            scale = 0.1 if t.name in ("ada", "head_ada", "deltas") else 1.0
            feeds[t.name] = (torch.randn(t.shape, generator=g) * scale).to(t.torch_dtype)
    if graph.component.endswith("transformer_fastvar"):
        # FastVAR picks tokens by rank, a step function of its inputs: with plain random tokens the
        # ranks at the keep boundary are near-ties that a 1e-6 change flips (var-d16: O(1) output
        # change), so parity would compare coin flips. Tokens with spread norms rank far apart.
        n = feeds["x"].shape[1]
        feeds["x"] = feeds["x"] * (1 + torch.randperm(n, generator=g)).view(1, n, 1).to(feeds["x"].dtype)
    return feeds


def text_vocab(engines) -> int | None:
    """The vocabulary size of the first engine that runs T5 in torch (None: none does, so random
    prompts use the ids every T5 has)."""
    for engine in engines:
        te = getattr(engine, "text_encoder", None)
        if te is not None and te.model is not None:
            return int(te.model.config.vocab_size)
    return None


def compare(
    reference: Engine,
    candidate: Engine,
    graphs: Sequence[GraphSpec],
    seed: int = 0,
    total_tokens: int | None = None,
    num_classes: int | None = None,
    vocab: int | None = None,
) -> list[Difference]:
    """Both engines on the same random feeds of each graph (``total_tokens`` / ``num_classes``:
    the feeds' ranges, by default the reference's VAR config; ``vocab``: T5's, by default
    :func:`text_vocab` of the two). A NaN or Inf in either output is recorded in ``non_finite``
    and fails ``ok``; ``rel`` covers the finite values."""
    out = []
    if total_tokens is None or num_classes is None:
        cfg = reference.var_config
        total_tokens, num_classes = cfg.schedule.total_tokens, cfg.num_classes
    vocab = vocab if vocab is not None else text_vocab([reference, candidate])
    for graph in graphs:
        feeds = random_feeds(graph, total_tokens, num_classes, seed, vocab)
        ref = reference.run(graph, {k: v.to(reference.device) for k, v in feeds.items()})
        got = candidate.run(graph, {k: v.to(candidate.device) for k, v in feeds.items()})
        for spec in graph.outputs:
            r, c = ref[spec.name].float().cpu(), got[spec.name].float().cpu()
            if graph.component.endswith("transformer_fastvar") and spec.name == "new_kv":
                r, c = slot_order_free(r), slot_order_free(c)
            bad = non_finite({reference.backend: r, candidate.backend: c})
            finite = torch.isfinite(r) & torch.isfinite(c)
            r, c = r[finite], c[finite]
            diff = (r - c).abs().max().item() if r.numel() else 0.0
            scale = r.abs().max().item() if r.numel() else 0.0
            out.append(Difference(graph.name, spec.name, diff, diff / max(scale, 1e-12), bad))
    return out


#: the symbolic dims that count requests (CFG rows, decoded images)
BATCH_DIMS = ("rows", "batch")


def fewer_rows(graph: GraphSpec, declared: Mapping[str, Sequence], limit: int) -> GraphSpec:
    """``graph`` with every dim its ONNX file declares as a batch dim (``declared``: each tensor's
    shape with symbolic dims named, :meth:`OrtEngine.declared_shapes`) cut to at most ``limit``.
    Rows are independent in every graph, so a few of them check the same ops, weights and numerics
    as hundreds; the static shapes themselves are checked by shape inference at export."""

    def cut(spec):
        dims = declared.get(spec.name, ())
        if len(dims) != len(spec.shape):
            return spec
        shape = tuple(min(n, limit) if d in BATCH_DIMS else n for n, d in zip(spec.shape, dims))
        return replace(spec, shape=shape)

    return replace(graph, inputs=tuple(map(cut, graph.inputs)), outputs=tuple(map(cut, graph.outputs)))


def slot_order_free(new_kv: Tensor) -> Tensor:
    """FastVAR writes a pruned block's keys and values in pivotal-rank order, and near-equal ranks
    may swap between backends; attention does not see slot order, so compare them sorted."""
    return new_kv.sort(dim=4).values


def polygraphy_runner(engine: Engine, graph: GraphSpec):
    """One graph of one engine as a polygraphy runner, for polygraphy's Comparator."""
    from collections import OrderedDict

    import numpy as np
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class EngineRunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=f"{engine.backend}:{graph.name}")

        def activate_impl(self) -> None:
            pass

        def deactivate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> TensorMetadata:
            meta = TensorMetadata()
            for t in graph.inputs:
                meta.add(t.name, dtype=torch.empty(0, dtype=t.torch_dtype).numpy().dtype, shape=t.shape)
            return meta

        def infer_impl(self, feed_dict: dict) -> OrderedDict:
            feeds = {k: torch.from_numpy(np.ascontiguousarray(v)).to(engine.device) for k, v in feed_dict.items()}
            start = time.perf_counter()
            out = engine.run(graph, feeds)
            result = OrderedDict((k, v.detach().float().cpu().numpy()) for k, v in out.items())
            self.inference_time = time.perf_counter() - start  # polygraphy reports it
            return result

    return EngineRunner()
