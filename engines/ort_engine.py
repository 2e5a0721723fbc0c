"""ONNX Runtime backend: the embedded default (CPU execution provider), CUDA / TensorRT EPs optional.

One ``InferenceSession`` per component runs the component's symbolic-dim graph for every static
shape of the artifact: measured on var-d16 (2 cores), one dynamic session is as fast as sessions
specialised per shape, and every extra session would hold another copy of the weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from varrt.engines.base import BackendUnavailable, EngineError, adopt_manifest
from varrt.engines.cuda_graphs import BufferPool
from varrt.export.artifact import Manifest, read_manifest, verify_files
from varrt.export.graphs import GraphSpec, TensorSpec

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # an extra: the CPU or the CUDA build
        raise BackendUnavailable(
            f"ONNX Runtime is not installed ({e}); pip install -e '.[cpu]' in the varrt checkout ('.[gpu]' on an "
            "NVIDIA GPU machine)"
        ) from None
    return ort


#: when ORT's intra-op threads spin waiting for work (see :func:`session_options`)
SPINNING = ("run", "always", "never")


def session_options(
    threads: int | None,
    optimization: str = "all",
    disable_fallback: bool = False,
    profile: str | None = None,
    spinning: str = "run",
):
    """``profile``: a path prefix for ONNX Runtime's per-node profile (one JSON file per session).

    ``spinning="run"`` (the default): the intra-op threads spin between the nodes of one run (cheap
    hand-offs) but stop when the run returns (``session.force_spinning_stop``). ``"always"`` is
    ORT's own default, which keeps them spinning after the run for the next one; ``"never"``
    turns spinning off (every node wakes its workers). Why not ORT's default: a varrt generation
    does torch work (sampling, the f_hat update) between every two calls, and with ORT's workers
    spinning on the same cores that work ran 2-3x slower (benchmarks/results/ort-spinning-demo.md).
    """
    ort = _import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    if spinning not in SPINNING:
        raise ValueError(f"spinning must be one of {', '.join(SPINNING)}, got {spinning!r}")
    if spinning == "run":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    elif spinning == "never":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    if disable_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile)
    return so


class OrtEngine:
    """Runs an export artifact's graphs with ONNX Runtime."""

    backend = "ort"

    def __init__(
        self,
        artifact: str | os.PathLike,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        optimization: str = "all",
        verify: bool = True,
        profile: str | os.PathLike | None = None,
        spinning: str = "run",
    ) -> None:
        """``profile``: record ONNX Runtime's per-node profile of every call (with this path
        prefix); :meth:`end_profiling` writes it and returns the files. ``spinning``: see
        :func:`session_options`."""
        ort = _import_ort()
        self.artifact = Path(artifact)
        self.manifest: Manifest = read_manifest(self.artifact)
        if verify:
            verify_files(self.artifact, self.manifest)
        m = self.manifest
        adopt_manifest(self, m, self.artifact)

        providers = list(providers)
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime provider(s) {missing} are not in this onnxruntime build (it has {available}); "
                "for CUDA: pip uninstall -y onnxruntime && pip install -e '.[gpu]' (onnxruntime-gpu)"
            )
        self.providers = providers
        on_gpu = providers[0] in GPU_PROVIDERS
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        so = session_options(threads, optimization, on_gpu, str(profile) if profile else None, spinning)
        self.sessions = {}
        for comp, meta in m.components.items():
            sess = ort.InferenceSession(str(self.artifact / meta["file"]), so, providers=providers)
            active = sess.get_providers()
            if active[0] != providers[0]:
                raise EngineError(
                    f"asked ONNX Runtime for {providers[0]} but the {comp} session runs on {active[0]} "
                    "(silent fallback: missing CUDA/cuDNN/TensorRT libraries?); check `varrt doctor`"
                )
            self.sessions[comp] = sess
        self._graphs = {g.name: g for g in m.graphs}
        self.buffers = BufferPool(self.device)

    def has_graph(self, graph: GraphSpec) -> bool:
        """An exported graph, or another static shape of an exported graph's structure (component,
        blocks, outputs) that the component's session takes: a session runs the symbolic graph, so
        an artifact exported for batch 1 also runs batch 4. (TensorRT stays strict: its profiles
        are the exported shapes.)"""
        if self._graphs.get(graph.name) == graph:
            return True
        if graph.component not in self.sessions or all(g.structure != graph.structure for g in self._graphs.values()):
            return False
        sess = self.sessions[graph.component]
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = {o.name: o for o in sess.get_outputs()}
        return set(inputs) == {t.name for t in graph.inputs} and all(
            t.name in io and _takes(io[t.name], t)
            for io, specs in ((inputs, graph.inputs), (outputs, graph.outputs))
            for t in specs
        )

    def declared_shapes(self, component: str) -> dict[str, tuple]:
        """Each input's and output's shape as the component's ONNX file declares it: ints for fixed
        dims, names for symbolic ones ('rows', 'batch', 'tokens', ...)."""
        sess = self.sessions[component]
        return {a.name: tuple(a.shape) for a in (*sess.get_inputs(), *sess.get_outputs())}

    def end_profiling(self) -> dict[str, Path]:
        """Stop profiling (an engine made with ``profile``): the profile file of each component."""
        return {comp: Path(sess.end_profiling()) for comp, sess in self.sessions.items()}

    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not self.has_graph(graph):
            have = ", ".join(sorted(self._graphs))
            raise EngineError(
                f"{graph.name} ({graph.component}) was not exported into {self.artifact} (it has: {have}); "
                "re-export with the plan and batch that need it (`varrt export --plan ... --batch ...`)"
            )
        graph.check_feeds(dict(feeds))
        for spec in (*graph.inputs, *graph.outputs):
            if spec.torch_dtype not in _NP:
                raise EngineError(
                    f"ONNX Runtime's I/O binding has no numpy type for {spec.dtype} ({spec.name}); run "
                    "bfloat16 artifacts on the trt or torch-graph backend"
                )
        return self._run_bound(self.sessions[graph.component], graph, feeds)

    def allocate(self, spec: TensorSpec, index: int = 0) -> Tensor:
        """The ``index``-th KV buffer of this shape, the same zeroed memory every generation: no
        fresh allocation (and page faults) per generation, and an address the I/O binding sees
        every call."""
        return self.buffers.take(spec, index)

    def _run_bound(self, sess, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Inputs bound by address (read in place: no numpy conversion, no copy; the KV cache is the
        whole fixed buffer, the graph reads its live prefix). Outputs: on the CPU, ORT allocates them
        from its arena (memory reused call after call, no page faults) and torch wraps them without
        a copy; on the GPU, they are written into torch CUDA tensors (no host round trip)."""
        binding = sess.io_binding()
        kind, idx = self.device.type, self.device.index or 0
        keep = []
        for spec in graph.inputs:
            t = feeds[spec.name].to(self.device).contiguous()
            keep.append(t)
            binding.bind_input(spec.name, kind, idx, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        if kind == "cpu":
            for spec in graph.outputs:
                binding.bind_output(spec.name, "cpu")
            sess.run_with_iobinding(binding)
            return {s.name: torch.from_numpy(v.numpy()) for s, v in zip(graph.outputs, binding.get_outputs())}
        outs = {s.name: torch.empty(s.shape, dtype=s.torch_dtype, device=self.device) for s in graph.outputs}
        for name, t in outs.items():
            binding.bind_output(name, kind, idx, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are ready
        sess.run_with_iobinding(binding)
        return outs


_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)"}


def _takes(arg, spec) -> bool:
    """Whether a session input/output (its type and its fixed and symbolic dims) fits ``spec``."""
    want = _ORT_TYPES.get(spec.dtype, f"tensor({spec.dtype})")
    return (
        arg.type == want
        and len(arg.shape) == len(spec.shape)
        and all(not isinstance(d, int) or d == n for d, n in zip(arg.shape, spec.shape))
    )
