"""Numerical comparison of two engines on the same graphs and inputs (export validation, `varrt compare`)."""

from __future__ import annotations

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
    """Plausible random inputs for any graph of the contract (valid labels, positions, live KV slots)."""
    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for t in graph.inputs:
        if t.name == "labels":
            feeds[t.name] = torch.randint(0, num_classes + 1, t.shape, generator=g)
        elif t.name == "pos_idx":
            feeds[t.name] = torch.randperm(total_tokens, generator=g)[: t.shape[0]].sort().values
        elif t.name == "kv_bias":
            live = torch.rand(t.shape, generator=g) < 0.5
            feeds[t.name] = torch.where(live, 0.0, -torch.inf)
        else:
            scale = 0.1 if t.name in ("ada", "head_ada") else 1.0
            feeds[t.name] = (torch.randn(t.shape, generator=g) * scale).to(t.torch_dtype)
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
            diff = (r - c).abs().max().item()
            out.append(Difference(graph.name, spec.name, diff, diff / max(r.abs().max().item(), 1e-12)))
    return out
