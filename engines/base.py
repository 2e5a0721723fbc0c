"""The one interface every backend implements, and what the runtime may ask of it.

The runtime never asks which backend it drives: it builds a :class:`~varrt.export.graphs.GraphSpec`
for each call (from the plan and the model's config) and hands the engine the feeds by name.
Backends differ only behind ``run``: eager torch, ONNX Runtime sessions, TensorRT contexts or
captured CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from varrt.export.configs import VARConfig, VQVAEConfig
from varrt.export.graphs import GraphSpec
from varrt.export.vqvae import MultiScaleQuantizer


class BackendUnavailable(RuntimeError):
    """A backend that cannot run on this machine (missing package, no GPU, ...), with the fix."""


class EngineError(RuntimeError):
    """An engine that cannot run a request: a graph that was not built, a mismatched artifact, ..."""


@runtime_checkable
class Engine(Protocol):
    #: short backend name ("torch", "ort", "trt", "torch-graph")
    backend: str
    var_config: VARConfig
    vqvae_config: VQVAEConfig
    #: dtype of the graphs' inputs, outputs and KV cache ("float32", "float16", "bfloat16"); a
    #: quantized artifact (int8, fp8) computes its matmuls lower but takes and returns float32
    precision: str
    #: codebook and Phi convolutions: the runtime accumulates f_hat with them (torch, fp32)
    quantizer: MultiScaleQuantizer
    #: where the runtime keeps the tensors it feeds (KV cache, conditioning)
    device: torch.device
    #: KV slots the compiled graphs were built for (None: any, as in eager torch)
    kv_capacity: int | None

    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run one static-shape graph; outputs by name, on ``device``."""
        ...

    def has_graph(self, graph: GraphSpec) -> bool:
        """Whether ``graph`` can run (compiled backends only run what was exported/built)."""
        ...


def adopt_manifest(engine, manifest, directory, device: torch.device | None = None) -> None:
    """Set a compiled engine's model attributes from its artifact: ``var_config``, ``vqvae_config``
    and ``quantizer`` for VAR; ``config`` and ``vae_config`` for Infinity (codes need no quantizer)."""
    from varrt.export.quantize import io_precision

    engine.precision, engine.kv_capacity = io_precision(manifest.precision), manifest.kv_capacity
    if manifest.family == "infinity":
        engine.config, engine.vae_config = manifest.infinity, manifest.bsq_vae
        engine.schedule = manifest.infinity_schedule
        return
    from varrt.export.artifact import load_artifact_quantizer

    engine.var_config, engine.vqvae_config = manifest.var, manifest.vqvae
    engine.quantizer = load_artifact_quantizer(directory, manifest)
    if device is not None:
        engine.quantizer = engine.quantizer.to(device)
