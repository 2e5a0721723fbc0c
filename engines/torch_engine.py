"""The eager PyTorch backend: the parity oracle every compiled backend is compared with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from varrt.export.bsq_vae import BSQVAE
from varrt.export.graphs import COMPONENTS, DTYPE_NAMES, GraphSpec, graph_module
from varrt.export.infinity import Infinity
from varrt.export.infinity_graphs import INFINITY_COMPONENTS, infinity_graph_module
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE

if TYPE_CHECKING:
    from varrt.export.text_encoder import TextEncoder


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
        if graph.structure not in self._modules:
            self._modules[graph.structure] = graph_module(
                graph.component, self.var, self.vqvae, graph.blocks, graph.output_names
            )
        return self._modules[graph.structure]

    @torch.inference_mode()
    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        graph.check_feeds(dict(feeds))
        out = self.module(graph)(*(feeds[t.name] for t in graph.inputs))
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        return {spec.name: t for spec, t in zip(graph.outputs, out)}


class InfinityTorchEngine:
    """The eager backend of the Infinity family (text encoder, conditioner, per-scale step and its
    probe / layer-set / FastVAR variants, decoder)."""

    backend = "torch"
    kv_capacity = None

    def __init__(self, model: Infinity, vae: BSQVAE, text_encoder: TextEncoder | None = None) -> None:
        self.model, self.vae, self.text_encoder = model.eval(), vae.eval(), text_encoder
        self.config, self.vae_config = model.cfg, vae.cfg
        self.device = model.head.weight.device
        self.precision = DTYPE_NAMES[model.mat_dtype]
        self._modules: dict[tuple, torch.nn.Module] = {}

    def has_graph(self, graph: GraphSpec) -> bool:
        if graph.component == "text_encoder":
            return self.text_encoder is not None
        return graph.component in INFINITY_COMPONENTS

    def module(self, graph: GraphSpec) -> torch.nn.Module:
        """One module per structure: a layer set or a pruned range is graph structure."""
        if graph.structure not in self._modules:
            self._modules[graph.structure] = infinity_graph_module(
                graph.component, self.model, self.vae, self.text_encoder, graph.blocks, graph.output_names
            )
        return self._modules[graph.structure]

    @torch.inference_mode()
    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        graph.check_feeds(dict(feeds))
        out = self.module(graph)(*(feeds[t.name] for t in graph.inputs))
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        return {spec.name: t for spec, t in zip(graph.outputs, out)}
