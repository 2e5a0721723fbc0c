"""``torch-graph``: the static per-scale graphs run by torch on CUDA, one CUDA graph per graph shape.

For GPUs without TensorRT, and the compiled path that can be measured on a GPU machine without
it; both families (:class:`TorchGraphEngine` for VAR, :class:`InfinityTorchGraphEngine` for
Infinity). Every graph of the contract (a static shape; CFG on or off is a different row count,
hence a different graph) gets static input buffers (:class:`StaticGraph`); its first call runs
eagerly (the warm-up), then it is captured and later calls copy the inputs in and replay. The KV
cache is bound where the runtime keeps it (no copy); the runtime's KV buffers are persistent
(:meth:`allocate`), so a (graph, KV buffer) pair is captured once per process. Captures share
one memory pool and are bounded (:mod:`varrt.engines.cuda_graphs`); a graph that cannot be
captured runs eagerly, with a warning. The modules are the eager engines' own
(:mod:`varrt.engines.torch_engine`), so torch-graph computes what eager torch computes.

Outputs are valid until the engine's next ``run``: with one shared pool, a graph's replay may
reuse memory another graph's outputs were captured in, so callers copy what they keep.

``compile=True`` runs each graph's module through ``torch.compile`` first (one static shape per
graph: :func:`compiled` lifts dynamo's recompile limit, 8 by default, to the number of graphs a
process may see, and makes hitting it an error instead of a silent fall back to eager).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
from torch import Tensor

from varrt.engines.base import BackendUnavailable
from varrt.engines.cuda_graphs import DEFAULT_LIMIT, BufferPool, GraphCache, capture, run_cached
from varrt.engines.tensorrt_engine import PASS_THROUGH
from varrt.engines.torch_engine import InfinityTorchEngine, TorchEngine
from varrt.export.bsq_vae import BSQVAE
from varrt.export.graphs import GraphSpec, TensorSpec
from varrt.export.infinity import Infinity
from varrt.export.text_encoder import TextEncoder
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE

#: the most static shapes one compiled module may be specialised to (dynamo's limit is 8)
MAX_SHAPES = 512
#: components run eagerly on the GPU, never captured: T5 runs once per generation (a capture saves
#: a few launches against the transformer's 13 scales), and transformers' attention-mask code may
#: branch on the mask's values, which a captured graph would freeze at the capture's prompts
EAGER_COMPONENTS = ("text_encoder",)


def compiled(module: torch.nn.Module, backend: str | Callable = "inductor", max_shapes: int = MAX_SHAPES):
    """``module`` under ``torch.compile(dynamic=False)``, called with dynamo's recompile limits
    at ``max_shapes`` (every static graph is one specialisation) and an error past them."""
    fn = torch.compile(module, backend=backend, dynamic=False)
    config = torch._dynamo.config
    names = {  # the names since torch 2.6 (recompile_*), or before (cache_size_*)
        ("recompile_limit", "cache_size_limit"): max_shapes,
        ("accumulated_recompile_limit", "accumulated_cache_size_limit"): max_shapes,
        ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"): True,
    }
    patch = config.patch({next(n for n in pair if hasattr(config, n)): v for pair, v in names.items()})

    def call(*args):
        with patch:
            return fn(*args)

    return call


class StaticGraph:
    """One static graph: its module and one static buffer per input, except the KV cache, which is
    read where the runtime keeps it. A CUDA graph captured from :meth:`call` reads the buffers'
    addresses, so :meth:`load` copies each call's inputs into them; the capture's other address,
    the KV cache's, is part of :meth:`key`. Device-agnostic (tested on the CPU)."""

    def __init__(self, module: Callable, graph: GraphSpec, device: torch.device) -> None:
        self.module, self.graph = module, graph
        self.inputs = {
            t.name: torch.zeros(t.shape, dtype=t.torch_dtype, device=device)
            for t in graph.inputs
            if t.name not in PASS_THROUGH
        }

    def load(self, feeds: Mapping[str, Tensor]) -> None:
        for name, buf in self.inputs.items():
            buf.copy_(feeds[name], non_blocking=True)

    def key(self, feeds: Mapping[str, Tensor]) -> Hashable:
        """What a captured graph is valid for: this graph and the addresses it reads in place."""
        return (self.graph.name, *(feeds[n].data_ptr() for n in PASS_THROUGH if n in feeds))

    def call(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = self.module(*(self.inputs.get(t.name, feeds.get(t.name)) for t in self.graph.inputs))
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        return {spec.name: t for spec, t in zip(self.graph.outputs, out)}


def cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            "torch-graph needs a CUDA GPU; torch sees none (torch.cuda.is_available() is False); see `varrt doctor`"
        )
    return torch.device("cuda", torch.cuda.current_device())


class _GraphEngine:
    """The CUDA-graph machinery of both families around an eager engine (``self.eager``) on CUDA."""

    backend = "torch-graph"
    kv_capacity = None

    def __init__(self, eager, compile: bool, cuda_graphs: bool, graph_limit: int) -> None:
        self.eager, self.device, self.precision = eager, eager.device, eager.precision
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self._modules: dict[tuple, Callable] = {}
        self._graphs: dict[str, StaticGraph] = {}
        self.buffers = BufferPool(self.device)
        self.graphs = GraphCache(graph_limit)
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every capture
        self.capture_stream = torch.cuda.Stream(self.device)

    def has_graph(self, graph: GraphSpec) -> bool:
        return self.eager.has_graph(graph)

    def _module(self, graph: GraphSpec) -> Callable:
        if graph.structure not in self._modules:
            m = self.eager.module(graph)
            self._modules[graph.structure] = compiled(m) if self.compile else m
        return self._modules[graph.structure]

    @torch.inference_mode()
    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if graph.component in EAGER_COMPONENTS:
            return self.eager.run(graph, feeds)
        graph.check_feeds(dict(feeds))
        g = self._graphs.get(graph.name)
        if g is None:
            g = self._graphs[graph.name] = StaticGraph(self._module(graph), graph, self.device)
        g.load(feeds)
        current = torch.cuda.current_stream(self.device)

        def captured():
            self.capture_stream.wait_stream(current)
            return capture(lambda: g.call(feeds), self.capture_stream, self.pool)

        def replay(entry) -> dict[str, Tensor]:
            entry[0].replay()
            return dict(entry[1])

        return run_cached(
            self.graphs,
            graph.name,
            g.key(feeds),
            enabled=self.cuda_graphs,
            run=lambda: g.call(feeds),
            capture=captured,
            replay=replay,
        )

    def allocate(self, spec: TensorSpec, index: int = 0) -> Tensor:
        """The ``index``-th KV buffer of this shape: zeroed, at the same address every generation,
        so captured graphs stay valid."""
        return self.buffers.take(spec, index)

    def memory(self) -> dict:
        return {"buffers_bytes": self.buffers.bytes, "cuda_graphs": self.graphs.stats()}


class TorchGraphEngine(_GraphEngine):
    """VAR: eager (or compiled) torch modules on CUDA, replayed from CUDA graphs per static shape."""

    def __init__(
        self, var: VAR, vqvae: VQVAE, compile: bool = False, cuda_graphs: bool = True, graph_limit: int = DEFAULT_LIMIT
    ) -> None:
        device = cuda_device()
        eager = TorchEngine(var.to(device), vqvae.to(device))
        super().__init__(eager, compile, cuda_graphs, graph_limit)
        self.var, self.vqvae = eager.var, eager.vqvae
        self.var_config, self.vqvae_config, self.quantizer = eager.var_config, eager.vqvae_config, eager.quantizer


class InfinityTorchGraphEngine(_GraphEngine):
    """Infinity: the conditioner, every transformer variant (plain, probe, layer set, FastVAR) and
    the decoder replayed from CUDA graphs per static shape, as on VAR; T5 runs eagerly on the GPU
    (:data:`EAGER_COMPONENTS`)."""

    def __init__(
        self,
        model: Infinity,
        vae: BSQVAE,
        text_encoder: TextEncoder | None = None,
        compile: bool = False,
        cuda_graphs: bool = True,
        graph_limit: int = DEFAULT_LIMIT,
    ) -> None:
        device = cuda_device()
        if text_encoder is not None and text_encoder.model is not None:
            text_encoder = TextEncoder(text_encoder.tokenizer, text_encoder.model.to(device), text_encoder.channels)
        eager = InfinityTorchEngine(model.to(device), vae.to(device), text_encoder)
        super().__init__(eager, compile, cuda_graphs, graph_limit)
        self.model, self.vae, self.text_encoder = eager.model, eager.vae, eager.text_encoder
        self.config, self.vae_config = eager.config, eager.vae_config
