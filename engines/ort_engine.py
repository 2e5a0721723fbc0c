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
from varrt.export.artifact import Manifest, read_manifest, verify_files
from varrt.export.graphs import GraphSpec

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


def session_options(threads: int | None, optimization: str = "all", disable_fallback: bool = False):
    ort = _import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
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
    ) -> None:
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
        so = session_options(threads, optimization, disable_fallback=on_gpu)
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

    def has_graph(self, graph: GraphSpec) -> bool:
        return self._graphs.get(graph.name) == graph

    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not self.has_graph(graph):
            have = ", ".join(sorted(self._graphs))
            raise EngineError(
                f"{graph.name} ({graph.component}) was not exported into {self.artifact} (it has: {have}); "
                "re-export with the plan and batch that need it (`varrt export --plan ... --batch ...`)"
            )
        graph.check_feeds(dict(feeds))
        sess = self.sessions[graph.component]
        if self.device.type == "cpu":
            feeds = live_prefix(feeds)
            outs = sess.run(None, {k: v.detach().contiguous().numpy() for k, v in feeds.items()})
            return {spec.name: torch.from_numpy(o) for spec, o in zip(graph.outputs, outs)}
        return self._run_bound(sess, graph, feeds)

    def _run_bound(self, sess, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """GPU: bind torch CUDA tensors by address (no host round trip)."""
        binding = sess.io_binding()
        idx = self.device.index or 0
        for spec in (*graph.inputs, *graph.outputs):
            if spec.torch_dtype not in _NP:
                raise EngineError(
                    f"ONNX Runtime's I/O binding has no numpy type for {spec.dtype} ({spec.name}); run "
                    "bfloat16 artifacts on the trt or torch-graph backend"
                )
        keep = []
        for spec in graph.inputs:
            t = feeds[spec.name].to(self.device).contiguous()
            keep.append(t)
            binding.bind_input(spec.name, "cuda", idx, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        outs = {s.name: torch.empty(s.shape, dtype=s.torch_dtype, device=self.device) for s in graph.outputs}
        for name, t in outs.items():
            binding.bind_output(name, "cuda", idx, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are ready
        sess.run_with_iobinding(binding)
        return outs


def live_prefix(feeds: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Cut the KV cache to its live prefix before a CPU run.

    The static graphs take the whole fixed-capacity cache (T slots) with the unused slots masked,
    which TensorRT and CUDA graphs want; on the CPU, ONNX Runtime's symbolic-capacity session would
    spend most of an early scale concatenating and attending over empty slots (var-d16: 680 slots
    when 1-30 are live). Slots are filled in order, so everything after the last slot that any
    block sees is dead; dropping it changes no result (masked slots add exp(-inf) = 0).
    """
    if "kv" not in feeds or "kv_bias" not in feeds:
        return feeds
    bias = feeds["kv_bias"]
    live = (bias == 0).reshape(-1, bias.shape[-1]).any(0).nonzero()
    end = int(live[-1]) + 1 if live.numel() else 1
    if end == bias.shape[-1]:
        return feeds
    return {**feeds, "kv": feeds["kv"][:, :, :, :, :end], "kv_bias": bias[..., :end]}
