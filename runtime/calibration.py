"""The calibration set of a quantized export: a few real generations, and the inputs each graph saw.

Activation scales are only as good as the activations they were measured on, so they are measured
on what the step graphs see in use: the exported policies generate ``generations`` batches (the
export's batch, consecutive classes, seeds 0..N-1, the weights' own sampling) in eager torch, and
every transformer call's feeds are recorded (the KV cache cut to the live prefix the call reads,
``kv_bias``'s P slots: the same results as the whole buffer, without storing its empty tail). The
set is a pure function of its fields, so the same export key gives the same scales.
With random weights the generations are noise and the scales mean nothing; the manifest says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch import Tensor

from varrt.engines.torch_engine import TorchEngine
from varrt.export.graphs import GraphSpec
from varrt.export.quantize import TRANSFORMER_COMPONENTS
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE
from varrt.runtime.policies import Policy
from varrt.runtime.sampling import SamplingConfig

#: generations per exported policy unless ``--calibrate`` says otherwise
DEFAULT_GENERATIONS = 4
#: the first seed of the decoder gate's held-out generations (the calibration's start at 0)
HELD_OUT_SEED0 = 1000


@dataclass(frozen=True)
class Calibration:
    generations: int
    batch: int
    sampling: tuple[tuple[str, float], ...]  # the weights' sampling defaults, sorted
    random_weights: bool = False
    seed0: int = 0  # the first generation's seed (the held-out set of the decoder's gate: HELD_OUT_SEED0)

    def __post_init__(self) -> None:
        if self.generations < 1:
            raise ValueError(f"--calibrate takes the number of calibration generations (>= 1), got {self.generations}")

    def labels(self, generation: int, num_classes: int) -> list[int]:
        """Consecutive classes: generation g covers classes g*batch .. g*batch+batch-1 (mod the count)."""
        return [(generation * self.batch + j) % num_classes for j in range(self.batch)]

    def seeds(self) -> list[int]:
        return list(range(self.seed0, self.seed0 + self.generations))

    def held_out(self) -> Calibration:
        """The same classes and sampling with other seeds: what the int8 decoder's gate measures on."""
        return replace(self, seed0=HELD_OUT_SEED0)

    def to_dict(self, num_classes: int | None = None) -> dict:
        d = {
            "generations": self.generations,
            "batch": self.batch,
            "seeds": self.seeds(),
            "classes": "consecutive: generation g takes classes g*batch .. g*batch+batch-1",
            "sampling": dict(self.sampling),
            "engine": "eager torch, fp32",
        }
        if num_classes is not None:
            d["labels"] = [self.labels(g, num_classes) for g in range(self.generations)]
        if self.random_weights:
            d["note"] = "random weights: the generations are noise and the activation scales are meaningless"
        return d


class RecordingEngine:
    """Eager torch that keeps a copy of every transformer call's feeds (policies that decide on
    decoded images, SkipVAR, see real ones)."""

    backend = "torch"
    kv_capacity = None

    def __init__(self, var: VAR, vqvae: VQVAE, components: Sequence[str]) -> None:
        self.inner = TorchEngine(var, vqvae)
        for name in ("var_config", "vqvae_config", "quantizer", "device", "precision"):
            setattr(self, name, getattr(self.inner, name))
        self.components = set(components)
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {}

    def has_graph(self, graph: GraphSpec) -> bool:
        return self.inner.has_graph(graph)

    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if graph.component in self.components:
            kept = read_prefix(feeds)
            self.feeds.setdefault(graph.component, []).append(
                {k: v.detach().cpu().contiguous().numpy().copy() for k, v in kept.items()}
            )
        return self.inner.run(graph, feeds)


def read_prefix(feeds: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """A step's feeds with ``kv`` cut to the P slots the graph reads (P = ``kv_bias``'s last dim):
    the graphs' capacity dim is symbolic, and the slots after P are never read."""
    if "kv" not in feeds or "kv_bias" not in feeds:
        return feeds
    return {**feeds, "kv": feeds["kv"][:, :, :, :, : feeds["kv_bias"].shape[-1]]}


def record_feeds(
    var: VAR,
    vqvae: VQVAE,
    policies: Sequence[Policy],
    calibration: Calibration,
    capacity: int,
    components: Sequence[str] = TRANSFORMER_COMPONENTS,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per component of ``components`` (the transformer's; ``decoder`` for an int8 decoder), the
    feeds of its calls in the calibration generations. A component is recorded in the generations
    of the first policy that runs it (``full`` first: the decoder at the full image size)."""
    from varrt.runtime.generate import generate

    sampling = SamplingConfig(**dict(calibration.sampling))
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for policy in policies:
        if all(c in out for c in components):
            break
        engine = RecordingEngine(var, vqvae, [c for c in components if c not in out])
        for g, seed in enumerate(calibration.seeds()):
            labels = calibration.labels(g, var.cfg.num_classes)
            generate(engine, labels, seed=seed, sampling=sampling, policy=policy, capacity=capacity)
        for comp, feeds in engine.feeds.items():
            out.setdefault(comp, feeds)
    return out
