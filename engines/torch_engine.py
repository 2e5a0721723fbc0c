"""The eager PyTorch backend: the parity oracle every compiled backend is compared with."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from varrt.export.graphs import COMPONENTS, DTYPE_NAMES, GraphSpec, graph_module
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE


class TorchEngine:
    """Runs any graph of the contract with the torch modules themselves (any static shape)."""

    backend = "torch"
    kv_capacity = None

    def __init__(self, var: VAR, vqvae: VQVAE) -> None:
        self.var, self.vqvae = var.eval(), vqvae.eval()
        self.var_config = var.cfg
        self.vqvae_config = vqvae.cfg
        self.quantizer = vqvae.quantize.float()
        self.device = var.head.weight.device
        self.precision = DTYPE_NAMES[var.mat_dtype]
        self._modules: dict[tuple, torch.nn.Module] = {}

    def has_graph(self, graph: GraphSpec) -> bool:
        return graph.component in COMPONENTS

    def module(self, graph: GraphSpec) -> torch.nn.Module:
        key = (graph.component, graph.blocks)
        if key not in self._modules:
            self._modules[key] = graph_module(graph.component, self.var, self.vqvae, graph.blocks)
        return self._modules[key]

    @torch.inference_mode()
    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        graph.check_feeds(dict(feeds))
        out = self.module(graph)(*(feeds[t.name] for t in graph.inputs))
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        return {spec.name: t for spec, t in zip(graph.outputs, out)}
