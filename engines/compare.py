"""Numerical comparison of two engines on the same graphs and inputs (export validation, `varrt compare`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from varrt.engines.base import Engine
from varrt.export.graphs import GraphSpec


@dataclass(frozen=True)
class Difference:
    graph: str
    output: str
    max_abs: float
    rel: float  # max |candidate - reference| / max |reference|

    def ok(self, tol: float) -> bool:
        return self.rel <= tol


def random_feeds(graph: GraphSpec, total_tokens: int, num_classes: int, seed: int = 0) -> dict[str, Tensor]:
    """Plausible random inputs for any graph of either family's contract (valid labels and
    positions, live KV slots and text tokens in every row)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {t.name: t.shape for t in graph.inputs}
    feeds = {}
    for t in graph.inputs:
        if t.name == "labels":
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
        elif t.name == "keep_rank":
            feeds[t.name] = torch.arange(t.shape[0])
        elif t.name in ("kv_bias", "text_bias"):
            live = torch.rand(t.shape, generator=g) < 0.5
            live[..., 0] = True  # a row with nothing to attend to would be NaN in every backend
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


def compare(reference: Engine, candidate: Engine, graphs: Sequence[GraphSpec], seed: int = 0) -> list[Difference]:
    out = []
    cfg = reference.var_config
    for graph in graphs:
        feeds = random_feeds(graph, cfg.schedule.total_tokens, cfg.num_classes, seed)
        ref = reference.run(graph, {k: v.to(reference.device) for k, v in feeds.items()})
        got = candidate.run(graph, {k: v.to(candidate.device) for k, v in feeds.items()})
        for spec in graph.outputs:
            r, c = ref[spec.name].float().cpu(), got[spec.name].float().cpu()
            if graph.component.endswith("transformer_fastvar") and spec.name == "new_kv":
                r, c = slot_order_free(r), slot_order_free(c)
            diff = (r - c).abs().max().item()
            out.append(Difference(graph.name, spec.name, diff, diff / max(r.abs().max().item(), 1e-12)))
    return out


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
