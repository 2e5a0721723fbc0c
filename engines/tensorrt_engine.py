"""TensorRT backend at run time: an artifact's engines (built by :mod:`varrt.engines.trt_build`)
behind the ``Engine`` protocol (TensorRT 10.12+ and 11.x).

Every profile has its own execution context; all contexts share one user-managed activation
buffer (they run one at a time on one stream). A context binds every I/O tensor of its engine
(:func:`~varrt.engines.trt_bindings.plan_bindings`): inputs are copied into preallocated torch
CUDA tensors bound once by address, except the KV cache, which is bound where the runtime keeps
it; outputs a graph leaves out (FastVAR's deltas on pruned scales) go to scratch memory.

The engine runs on its own CUDA stream, ordered after the caller's current stream on entry and
before it on return (TensorRT documents extra device syncs on the legacy default stream). After
one plain call, each (graph, KV address) is captured into a CUDA graph and replayed
(:mod:`varrt.engines.cuda_graphs`: bounded, one shared memory pool; a graph that cannot be
captured runs without one, with a warning). NVTX ranges ``{graph}/{component}`` name every call.
TensorRT's messages are kept, and every error quotes the last ones.

Engines are deserialised when a component is first used, so an artifact's components that a
generation never calls (e.g. the plain transformer of an eval export) take no GPU memory.
TensorRT is imported lazily: the rest of varrt never needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from varrt.engines.base import BackendUnavailable, EngineError, adopt_manifest
from varrt.engines.cuda_graphs import BufferPool, GraphCache, capture, run_cached
from varrt.engines.trt_bindings import Binding, IOTensor, check_binding, plan_bindings, scratch_layout
from varrt.engines.trt_build import build_artifact
from varrt.engines.trt_config import TRT_INSTALL, BuildConfig, Target, check_engine_manifest, check_trt_version
from varrt.engines.trt_log import TrtLog, make_logger
from varrt.export.artifact import read_manifest
from varrt.export.graphs import DTYPE_NAMES, GraphSpec, TensorSpec

#: inputs bound where the runtime keeps them instead of being copied (large, address-stable)
PASS_THROUGH = ("kv",)


def import_tensorrt():
    """``tensorrt``, or one clear error: not installed, outside the supported range, or no GPU."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise BackendUnavailable(f"TensorRT is not installed ({e}); {TRT_INSTALL}") from None
    check_trt_version(trt.__version__)
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            "TensorRT needs an NVIDIA GPU, and torch sees none (torch.cuda.is_available() is "
            "False: no GPU, no driver, or a CPU-only torch build); see `varrt doctor`"
        )
    return trt


def current_target(trt) -> Target:
    major, minor = torch.cuda.get_device_capability()
    return Target(trt.__version__, torch.cuda.get_device_name(), f"{major}.{minor}")


#: loggers handed to TensorRT, which keeps raw pointers to them: they must outlive its objects
_LOGGERS: list = []


def new_runtime(trt, log: TrtLog):
    """A ``trt.Runtime`` logging into ``log``."""
    _LOGGERS.append(make_logger(trt, log))
    return trt.Runtime(_LOGGERS[-1])


def torch_dtype(trt, dt) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.uint8: torch.uint8,
        trt.bool: torch.bool,
    }
    return table[dt]


def engine_io(trt, engine) -> list[IOTensor]:
    """Every I/O tensor of an engine, with its mode and dtype."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        out.append(IOTensor(name, is_input, DTYPE_NAMES[torch_dtype(trt, engine.get_tensor_dtype(name))]))
    return out


class _Scratch:
    """Memory for the outputs graphs leave out, shared by every context (they run one at a time).
    Grows by allocating a larger buffer; older ones stay alive (contexts and graphs point at them)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.buffers = device, [torch.empty(0, dtype=torch.uint8, device=device)]

    def take(self, nbytes: int) -> Tensor:
        if nbytes > self.buffers[-1].numel():
            self.buffers.append(torch.empty(nbytes, dtype=torch.uint8, device=self.device))
        return self.buffers[-1]

    @property
    def bytes(self) -> int:
        return sum(b.numel() for b in self.buffers)


class _Context:
    """One execution context (one profile) with every I/O tensor of its engine bound."""

    def __init__(self, trt, engine, io, profile: int, graph: GraphSpec, owner: TrtEngine) -> None:
        stream, log, scratch, device, memory = owner.stream, owner.log, owner.scratch, owner.device, owner.activations
        self.graph, self.log = graph, log
        where = f"the {graph.component} engine"
        plan = plan_bindings(io, graph, where)
        ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise log.error(f"TensorRT could not create an execution context for {graph.name}.")
        try:
            ok = ctx.set_optimization_profile_async(profile, stream.cuda_stream)  # the enqueue stream
        except RuntimeError:
            ok = False
        if not ok:
            raise log.error(f"TensorRT could not select profile {profile} ({graph.name}) of {where}.")
        ctx.set_device_memory(memory.data_ptr(), memory.numel())
        ctx.nvtx_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY  # built DETAILED for the layer JSON
        self.ctx = ctx
        for spec in graph.inputs:
            if not ctx.set_input_shape(spec.name, tuple(spec.shape)):
                raise log.error(f"TensorRT refused the shape {spec.shape} of {spec.name!r} for {graph.name}.")
        self.buffers: dict[str, Tensor] = {}
        self.bindings: dict[str, Binding] = {}
        for spec in (*graph.inputs, *graph.outputs):
            shape = tuple(ctx.get_tensor_shape(spec.name))
            if shape != tuple(spec.shape):
                raise log.error(f"{graph.name}: {where} makes {spec.name!r} {shape}, the graph says {spec.shape}.")
            self.bindings[spec.name] = Binding(spec.name, shape, spec.torch_dtype, device)
            if spec.name not in PASS_THROUGH:
                self.buffers[spec.name] = torch.empty(shape, dtype=spec.torch_dtype, device=device)
                self._bind(spec.name, self.buffers[spec.name].data_ptr())
        sizes = [
            _volume(ctx.get_tensor_shape(n)) * torch_dtype(trt, engine.get_tensor_dtype(n)).itemsize
            for n in plan.scratch
        ]
        offsets, total = scratch_layout(sizes)
        self.scratch = scratch.take(total) if plan.scratch else None
        for name, offset in zip(plan.scratch, offsets):
            self._bind(name, self.scratch.data_ptr() + offset)
        self.scratch_names = plan.scratch

    def _bind(self, name: str, address: int) -> None:
        if not self.ctx.set_tensor_address(name, address):
            raise self.log.error(f"TensorRT refused the address of {name!r} for {self.graph.name}.")

    def bind_pass_through(self, feeds: Mapping[str, Tensor]) -> tuple:
        key = []
        for name in PASS_THROUGH:
            if name in feeds:
                t = feeds[name]
                check_binding(t, self.bindings[name])
                self._bind(name, t.data_ptr())
                key.append(t.data_ptr())
        return tuple(key)

    def enqueue(self, stream) -> None:
        if not self.ctx.execute_async_v3(stream.cuda_stream):
            raise self.log.error(f"TensorRT failed to enqueue {self.graph.name} (execute_async_v3 returned False).")


def _volume(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


class TrtEngine:
    """Runs an artifact's graphs with TensorRT engines built by :func:`build_artifact`."""

    backend = "trt"

    def __init__(
        self,
        artifact: str | os.PathLike,
        config: BuildConfig | None = None,
        cuda_graphs: bool = True,
        say: Callable[[str], None] = lambda _m: None,
        strict_weights: bool = False,
        graph_limit: int | None = None,
    ) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.artifact = Path(artifact)
        self.manifest = read_manifest(self.artifact)
        self.device = torch.device("cuda", torch.cuda.current_device())
        adopt_manifest(self, self.manifest, self.artifact, self.device)
        self.cuda_graphs = cuda_graphs
        self.log = TrtLog("WARNING")
        target = current_target(trt)
        self.dirs = build_artifact(self.artifact, config or BuildConfig(), say, strict_weights=strict_weights)
        self._graphs = {g.name: g for g in self.manifest.graphs}
        self.meta = {}
        for comp, d in self.dirs.items():
            meta = json.loads((d / "manifest.json").read_text())
            check_engine_manifest(meta, target, str(d / "engine.plan"))
            self.meta[comp] = meta
        self.runtime = new_runtime(trt, self.log)
        self.engines: dict[str, tuple] = {}  # component -> (ICudaEngine, its I/O), deserialised on first use
        need = max((max(m.get("profile_device_memory_bytes") or [0]) for m in self.meta.values()), default=0)
        if not all(m.get("profile_device_memory_bytes") for m in self.meta.values()):
            need = max(need, *(self._memory_of(c) for c in self.meta))
        self.activations = torch.empty(max(need, 256), dtype=torch.uint8, device=self.device)  # shared by all
        self.stream = torch.cuda.Stream(self.device)
        self.scratch = _Scratch(self.device)
        self.buffers = BufferPool(self.device)
        self.graphs = GraphCache(graph_limit) if graph_limit else GraphCache()
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every capture
        self.contexts: dict[str, _Context] = {}

    def _engine(self, component: str):
        if component not in self.engines:
            path = self.dirs[component] / "engine.plan"
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise self.log.error(f"TensorRT could not deserialise {path}; rebuild it (`varrt build --force`).")
            self.engines[component] = (engine, engine_io(self.trt, engine))
        return self.engines[component]

    def _memory_of(self, component: str) -> int:
        engine, _ = self._engine(component)
        return max(engine.get_device_memory_size_for_profile_v2(k) for k in range(engine.num_optimization_profiles))

    def allocate(self, spec: TensorSpec, index: int = 0) -> Tensor:
        """The ``index``-th KV buffer of this shape, at the same address every generation."""
        return self.buffers.take(spec, index)

    def has_graph(self, graph: GraphSpec) -> bool:
        return self._graphs.get(graph.name) == graph

    def _context(self, graph: GraphSpec) -> _Context:
        if graph.name not in self.contexts:
            engine, io = self._engine(graph.component)
            profile = self.meta[graph.component]["profiles"].index(graph.name)
            self.contexts[graph.name] = _Context(self.trt, engine, io, profile, graph, self)
        return self.contexts[graph.name]

    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Outputs are the context's buffers: valid until this graph runs again."""
        if not self.has_graph(graph):
            raise EngineError(
                f"{graph.name} was not exported into {self.artifact}; re-export with the policy and batch that need it"
            )
        graph.check_feeds(dict(feeds))
        caller, s = torch.cuda.current_stream(self.device), self.stream
        s.wait_stream(caller)  # inputs written on the caller's stream are ready
        with torch.cuda.stream(s), torch.cuda.nvtx.range(f"{graph.name}/{graph.component}"):
            ctx = self._context(graph)
            for spec in graph.inputs:
                if spec.name not in PASS_THROUGH:
                    ctx.buffers[spec.name].copy_(feeds[spec.name], non_blocking=True)
            key = (graph.name, ctx.bind_pass_through(feeds))

            def captured():
                s.synchronize()  # the plain call before a capture has finished its deferred work
                return capture(lambda: ctx.enqueue(s), s, self.pool)[0]

            run_cached(
                self.graphs,
                graph.name,
                key,
                enabled=self.cuda_graphs,
                run=lambda: ctx.enqueue(s),
                capture=captured,
                replay=lambda g: g.replay(),
            )
        caller.wait_stream(s)  # the caller's next work sees the outputs
        return {spec.name: ctx.buffers[spec.name] for spec in graph.outputs}

    def memory(self) -> dict:
        """GPU bytes this engine holds beyond the engines' weights, and its CUDA graphs."""
        return {
            "activations_bytes": self.activations.numel(),
            "scratch_bytes": self.scratch.bytes,
            "buffers_bytes": self.buffers.bytes,
            "engines_loaded": sorted(self.engines),
            "cuda_graphs": self.graphs.stats(),
        }
