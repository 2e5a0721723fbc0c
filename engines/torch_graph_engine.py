"""``torch-graph``: the static per-scale graphs run by torch on CUDA, one CUDA graph per graph shape.

For GPUs without TensorRT, and the compiled path that can be measured on a GPU machine without
it. Every graph of the contract (a static shape; CFG on or off is a different row count, hence a
different graph) gets static input and output buffers and is captured after one warm-up call;
later calls copy the inputs in and replay. The KV cache is bound where the runtime keeps it (no
copy); a new cache address means a new capture. Optionally each graph's module is
``torch.compile``-d first.

Outputs are the graph's static buffers: valid until the same graph runs again.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from varrt.engines.base import BackendUnavailable
from varrt.engines.tensorrt_engine import PASS_THROUGH, persistent_buffer
from varrt.export.graphs import COMPONENTS, DTYPE_NAMES, GraphSpec, TensorSpec, graph_module
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE


class _Captured:
    def __init__(self, module: torch.nn.Module, graph: GraphSpec, device: torch.device) -> None:
        self.module, self.graph = module, graph
        self.inputs = {
            t.name: torch.zeros(t.shape, dtype=t.torch_dtype, device=device)
            for t in graph.inputs
            if t.name not in PASS_THROUGH
        }
        self.captures: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, Tensor]]] = {}

    def call(self, feeds: Mapping[str, Tensor]) -> tuple:
        args = [self.inputs.get(t.name, feeds.get(t.name)) for t in self.graph.inputs]
        out = self.module(*args)
        return (out,) if isinstance(out, Tensor) else tuple(out)


class TorchGraphEngine:
    """Eager torch modules on CUDA, replayed from CUDA graphs per static shape."""

    backend = "torch-graph"
    kv_capacity = None

    def __init__(self, var: VAR, vqvae: VQVAE, compile: bool = False) -> None:
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                "torch-graph needs a CUDA GPU; torch sees none (torch.cuda.is_available() is False)"
            )
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.var, self.vqvae = var.to(self.device).eval(), vqvae.to(self.device).eval()
        self.var_config, self.vqvae_config = var.cfg, vqvae.cfg
        self.quantizer = vqvae.quantize.float()
        self.precision = DTYPE_NAMES[var.mat_dtype]
        self.compile = compile
        self._modules: dict[tuple, torch.nn.Module] = {}
        self._graphs: dict[str, _Captured] = {}
        self._buffers: dict[tuple, Tensor] = {}

    def has_graph(self, graph: GraphSpec) -> bool:
        return graph.component in COMPONENTS

    def _module(self, graph: GraphSpec) -> torch.nn.Module:
        if graph.structure not in self._modules:
            m = graph_module(graph.component, self.var, self.vqvae, graph.blocks, graph.returns_deltas)
            self._modules[graph.structure] = torch.compile(m, dynamic=False) if self.compile else m
        return self._modules[graph.structure]

    @torch.inference_mode()
    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        graph.check_feeds(dict(feeds))
        cap = self._graphs.get(graph.name)
        if cap is None:
            cap = self._graphs[graph.name] = _Captured(self._module(graph), graph, self.device)
        for name, buf in cap.inputs.items():
            buf.copy_(feeds[name], non_blocking=True)
        key = tuple(feeds[n].data_ptr() for n in PASS_THROUGH if n in feeds)
        if key not in cap.captures:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the capture (allocator, lazy kernels, compile)
                cap.call(feeds)
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = cap.call(feeds)
            cap.captures[key] = (g, {spec.name: t for spec, t in zip(graph.outputs, out)})
        g, outputs = cap.captures[key]
        g.replay()
        return dict(outputs)

    def allocate(self, spec: TensorSpec) -> Tensor:
        """A zeroed buffer the runtime keeps across calls (the KV cache), at the same address every
        generation, so that captured graphs stay valid."""
        return persistent_buffer(self._buffers, spec, self.device)
