"""TensorRT build configuration, cache keys and compatibility checks — everything that needs no GPU.

A build is one engine per component of an export artifact, with one optimisation profile per
static graph of that component (min = opt = max). The cache key hashes what an engine depends on:
the component's ONNX and the weights file (their sha256 from the artifact manifest), the resolved
build config, the TensorRT version, the GPU's name and compute capability, and the profiles.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from varrt.engines.trt_bindings import scratch_layout
from varrt.export.artifact import Manifest, cache_dir
from varrt.export.graphs import GraphSpec

MIN_TRT = (10, 12)
#: the TensorRT majors whose Python API this backend is written against (10.12+ and 11.x)
MAX_TRT_MAJOR = 11
#: the engine's weights may exceed the ONNX weights by this factor before the build warns
WEIGHTS_SLACK = 1.25


class TrtCompatibilityError(RuntimeError):
    """An engine that does not fit the running TensorRT / GPU; the message says what differs."""


@dataclass(frozen=True)
class BuildConfig:
    """What a build is asked for (precision comes from the ONNX graphs: strongly typed)."""

    opt_level: int = 3  # builder_optimization_level, 0..5
    workspace_gib: float = 4.0  # WORKSPACE memory pool limit
    max_aux_streams: int = 0  # single-stream engines capture cleanly into CUDA graphs
    tf32: bool = True  # only affects fp32 math
    timing_cache: bool = True  # one per (TensorRT version, compute capability), shared by all builds

    def __post_init__(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise ValueError(f"--opt-level must be 0..5, got {self.opt_level}")
        if self.workspace_gib <= 0:
            raise ValueError(f"--workspace must be > 0 GiB, got {self.workspace_gib}")
        if self.max_aux_streams < 0:
            raise ValueError(f"max_aux_streams must be >= 0, got {self.max_aux_streams}")

    def resolved(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """The machine an engine is built for: TensorRT version, GPU name, compute capability."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return self.compute_capability.replace(".", "")


def parse_trt_version(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:4] if p.isdigit())


#: how a GPU user gets TensorRT (see README, "On an NVIDIA GPU")
TRT_INSTALL = (
    "install it on an NVIDIA GPU machine with pip install -e '.[gpu,trt-cu12]' in the varrt checkout "
    "('.[gpu,trt-cu13]' with a CUDA 13 torch; README: 'On an NVIDIA GPU')"
)


def check_trt_version(version: str) -> None:
    v = parse_trt_version(version)
    if v[:2] < MIN_TRT or v[0] > MAX_TRT_MAJOR:
        raise TrtCompatibilityError(
            f"TensorRT {version} is outside the range varrt is written for ({MIN_TRT[0]}.{MIN_TRT[1]} to "
            f"{MAX_TRT_MAJOR}.x, strongly typed networks): {TRT_INSTALL}"
        )


def component_profiles(manifest: Manifest, component: str) -> list[GraphSpec]:
    """The static graphs of one component, in manifest order: profile k is the k-th graph."""
    graphs = [g for g in manifest.graphs if g.component == component]
    if not graphs:
        raise ValueError(f"the artifact has no {component} graphs")
    return graphs


def profile_shapes(graph: GraphSpec) -> dict[str, tuple[int, ...]]:
    """min = opt = max for every input of one static graph."""
    return {t.name: tuple(t.shape) for t in graph.inputs}


def cache_key(manifest: Manifest, component: str, config: BuildConfig, target: Target) -> str:
    """What an engine depends on. Its weights are those the component reads (recorded per component
    since artifact format 2), not all of weights.bin, which a checkpoint's pack may grow later."""
    meta = manifest.components[component]
    identity = {
        "onnx": meta["sha256"],
        "weights": meta.get("weights_sha256") or manifest.files["weights.bin"]["sha256"],
        "precision": manifest.precision,
        "config": config.resolved(),
        "tensorrt": target.trt_version,
        "gpu": target.gpu_name,
        "compute_capability": target.compute_capability,
        "profiles": [profile_shapes(g) for g in component_profiles(manifest, component)],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def engine_dir(manifest: Manifest, component: str, config: BuildConfig, target: Target) -> Path:
    return (
        cache_dir() / "engines" / f"{manifest.label}-{component}-{cache_key(manifest, component, config, target)[:16]}"
    )


def timing_cache_path(target: Target) -> Path:
    """One timing cache per (TensorRT version, compute capability, GPU model): a cache carries its
    device's properties, and two GPUs of one SM (an H100 PCIe and SXM) time differently."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", target.gpu_name).strip("-").lower()
    return cache_dir() / "timing" / f"trt{target.trt_version}-sm{target.sm}-{gpu}.cache"


@dataclass(frozen=True)
class WeightsCheck:
    """Did the profiles share one copy of the weights? TensorRT documents ``extra_memory_target``
    as a hint, so a miss is a warning recorded in the engine's manifest (a failure on request)."""

    engine_bytes: int | None
    onnx_bytes: int
    source: str  # "TOTAL_WEIGHTS_SIZE" or "plan size" (TensorRT < 10.14 has no weights statistic)

    @property
    def shared(self) -> bool | None:
        if self.engine_bytes is None:
            return None
        return self.engine_bytes <= WEIGHTS_SLACK * max(self.onnx_bytes, 1)

    def message(self, component: str) -> str | None:
        if self.shared is not False:
            return None
        return (
            f"{component}: the engine holds {self.engine_bytes / 2**20:.0f} MiB ({self.source}), more than "
            f"{WEIGHTS_SLACK} x the {self.onnx_bytes / 2**20:.0f} MiB of weights in its ONNX: the profiles may not "
            "share one copy of the weights (see build.log)"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "shared": self.shared}


def weights_check(total_weights: int | None, plan_bytes: int, onnx_bytes: int) -> WeightsCheck:
    """From TensorRT's total-weights statistic when it has one, else from the plan's size (weights
    plus kernels: an upper bound, so a miss is still caught)."""
    if total_weights is not None:
        return WeightsCheck(total_weights, onnx_bytes, "TOTAL_WEIGHTS_SIZE")
    return WeightsCheck(plan_bytes, onnx_bytes, "plan size")


def check_engine_manifest(meta: dict, target: Target, where: str) -> None:
    """Refuse, before deserialising, an engine built for another TensorRT or GPU (say what differs)."""
    diffs = []
    if meta.get("tensorrt") != target.trt_version:
        diffs.append(f"TensorRT {meta.get('tensorrt')} (here {target.trt_version})")
    if meta.get("compute_capability") != target.compute_capability:
        diffs.append(f"compute capability {meta.get('compute_capability')} (here {target.compute_capability})")
    if meta.get("gpu") != target.gpu_name:
        diffs.append(f"GPU {meta.get('gpu')} (here {target.gpu_name})")
    if diffs:
        raise TrtCompatibilityError(
            f"{where} was built for " + ", ".join(diffs) + "; TensorRT plans only run on the TensorRT build and "
            "GPU they were built with — rebuild with `varrt build ARTIFACT`"
        )


def engine_weight_bytes(manifest: Manifest) -> dict[str, int]:
    """Weights each component's engine holds: its ONNX's (profiles share them; the build checks).
    Each component is its own network, hence its own engine and its own copy of the weights it
    uses: a FastVAR artifact's plain and FastVAR transformers each hold the blocks' weights."""
    return {c: int(meta.get("weight_bytes") or 0) for c, meta in manifest.components.items()}


def left_out_bytes(graph: GraphSpec) -> dict[str, int]:
    """Bytes of each output a component's engine writes but ``graph`` leaves out: FastVAR's pruned
    scales leave out ``new_deltas`` (shaped like their ``deltas`` input); a StageVAR low-rank scale
    that no later scale reads leaves out ``new_kv`` (the cache's layout for the scale's N tokens)
    and ``chunk_hidden`` (shaped like its ``chunk_restore`` input)."""
    kept, inputs = set(graph.output_names), {t.name: t for t in graph.inputs}
    nbytes = lambda shape, t: math.prod(shape) * t.torch_dtype.itemsize  # noqa: E731
    out = {}
    if "deltas" in inputs and "new_deltas" not in kept:
        out["new_deltas"] = nbytes(inputs["deltas"].shape, inputs["deltas"])
    if "chunk_restore" in inputs and "new_kv" not in kept:
        kv, n = inputs["kv"], inputs["x"].shape[1]
        out["new_kv"] = nbytes((*kv.shape[:4], n, *kv.shape[5:]), kv)
        out["chunk_hidden"] = nbytes(inputs["chunk_restore"].shape, inputs["chunk_restore"])
    return out


def scratch_bytes(manifest: Manifest) -> int:
    """GPU scratch for the outputs graphs leave out but their engines write (:func:`left_out_bytes`):
    one buffer of the largest call's, packed as the engine packs it."""
    return max(
        (scratch_layout(list(sizes.values()))[1] for g in manifest.graphs if (sizes := left_out_bytes(g))), default=0
    )
