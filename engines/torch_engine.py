"""The eager PyTorch backend: the parity oracle every compiled backend is compared with."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from varrt.export.graphs import DTYPE_NAMES, GraphSpec, graph_module
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE


class TorchEngine:
    """Runs any graph of the contract with the torch modules themselves (any static shape)."""

    backend = "torch"

    def __init__(self, var: VAR, vqvae: VQVAE) -> None:
        self.var, self.vqvae = var.eval(), vqvae.eval()
        self.var_config = var.cfg
        self.vqvae_config = vqvae.cfg
        self.quantizer = vqvae.quantize.float()
        self.device = var.head.weight.device
        self.precision = DTYPE_NAMES[var.mat_dtype]
        self._modules = {c: graph_module(c, var, vqvae) for c in ("conditioner", "transformer", "decoder")}

    def has_graph(self, graph: GraphSpec) -> bool:
        return graph.component in self._modules

    @torch.inference_mode()
    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        graph.check_feeds(dict(feeds))
        out = self._modules[graph.component](*(feeds[t.name] for t in graph.inputs))
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        return {spec.name: t for spec, t in zip(graph.outputs, out)}
