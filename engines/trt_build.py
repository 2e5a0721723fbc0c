"""Building TensorRT engines from an export artifact (TensorRT 10.12+ and 11.x, strongly typed).

One engine per component (conditioner, transformer[, _probe, _layers, _fastvar], decoder), built
from the component's ONNX with one optimisation profile per static graph (min = opt = max); the
weights are stored once (``extra_memory_target = 0`` on every profile after the first), which the
build checks with the engine's total-weights statistic and records in the engine's manifest. Each
variant of the transformer is its own network, hence its own engine with its own weights: a
FastVAR artifact holds the plain transformer (its early scales) and the FastVAR one, and
``varrt inspect`` says how many bytes that is.

Engines are cached under ``$VARRT_CACHE/engines/<model>-<component>-<key>/`` (plan, manifest,
build.log, layers.json), built in a temporary directory under a file lock and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from varrt.engines.base import EngineError
from varrt.engines.trt_config import (
    BuildConfig,
    component_profiles,
    engine_dir,
    profile_shapes,
    timing_cache_path,
    weights_check,
)
from varrt.engines.trt_log import TrtLog, make_logger
from varrt.export.artifact import Manifest, atomic_write_text, read_manifest, verify_files
from varrt.export.quantize import QUANTIZED, TENSORRT_QUANTIZED

Say = Callable[[str], None]


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock (two builds of the same engine wait for each other instead of colliding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_progress(trt, say: Say):
    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            say(f"{'  ' if parent_phase else ''}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            if time.monotonic() - self.last > 5:
                self.last = time.monotonic()
                say(f"  {phase_name}: step {step + 1}")
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Progress()


def _parse(trt, builder, log: TrtLog, onnx_path: Path):
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # ignored (always on) in 11
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, make_logger(trt, log))
    if not parser.parse_from_file(str(onnx_path)):  # from the file: its external weights resolve
        errors = [
            f"{parser.get_error(i).node_name()} ({parser.get_error(i).node_operator()}): {parser.get_error(i).desc()}"
            for i in range(parser.num_errors)
        ]
        raise log.error(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors) + ".")
    return network, parser


def _config(trt, builder, log: TrtLog, config: BuildConfig, graphs, tc_path: Path, say: Say):
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * 2**30))
    cfg.builder_optimization_level = config.opt_level
    cfg.max_aux_streams = config.max_aux_streams
    cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer JSON; lowered again at run time
    if not config.tf32:
        cfg.clear_flag(trt.BuilderFlag.TF32)
    cfg.progress_monitor = make_progress(trt, say)
    if config.timing_cache:
        cache = cfg.create_timing_cache(tc_path.read_bytes() if tc_path.exists() else b"")
        if not cfg.set_timing_cache(cache, ignore_mismatch=False):
            raise log.error(f"TensorRT refused the timing cache {tc_path}; delete it to start a new one.")
    for k, graph in enumerate(graphs):
        profile = builder.create_optimization_profile()
        for name, shape in profile_shapes(graph).items():
            profile.set_shape(name, shape, shape, shape)
        if k > 0:
            profile.extra_memory_target = 0.0  # a hint: weights stay shared with profile 0
        if cfg.add_optimization_profile(profile) < 0:
            raise log.error(f"TensorRT refused the optimisation profile of {graph.name}.")
    return cfg


def build_component(
    artifact: Path,
    manifest: Manifest,
    component: str,
    config: BuildConfig,
    say: Say = lambda _m: None,
    strict_weights: bool = False,
) -> Path:
    """Build (or find in the cache) the engine of one component; returns its directory.

    ``strict_weights`` turns an engine whose weights look duplicated across profiles into an
    error instead of a warning (also for a cached engine: its manifest recorded the check)."""
    import torch

    from varrt.engines.tensorrt_engine import current_target, import_tensorrt, new_runtime

    trt = import_tensorrt()
    target = current_target(trt)
    out = engine_dir(manifest, component, config, target)
    with file_lock(out.with_name(out.name + ".lock")):
        if (out / "engine.plan").exists() and (out / "manifest.json").exists():
            say(f"{component}: cached engine {out}")
            _weights_verdict(json.loads((out / "manifest.json").read_text()), component, strict_weights, say)
            return out
        log = TrtLog("INFO", keep_all=True)  # a build keeps everything for build.log
        try:
            builder = trt.Builder(make_logger(trt, log))
        except TypeError as e:  # "pybind11::init(): factory function returned nullptr"
            raise log.error(
                f"TensorRT could not initialise CUDA ({e}); check the driver (torch CUDA {torch.version.cuda}) "
                "with `varrt doctor`."
            ) from None
        onnx_path = artifact / manifest.components[component]["file"]
        say(f"{component}: parsing {onnx_path.name}")
        network, _parser = _parse(trt, builder, log, onnx_path)
        graphs = component_profiles(manifest, component)
        tc_path = timing_cache_path(target)
        cfg = _config(trt, builder, log, config, graphs, tc_path, say)
        say(f"{component}: building {len(graphs)} profiles (opt level {config.opt_level}, tf32 {config.tf32})")
        t0 = time.perf_counter()
        plan = builder.build_serialized_network(network, cfg)
        build_s = time.perf_counter() - t0
        if plan is None:
            oom = any("out of memory" in m.lower() or "cudaErrorMemoryAllocation" in m for m in log.last(5, "ERROR"))
            hint = "out of GPU memory: lower --workspace, free GPU memory, or build on a larger GPU" if oom else ""
            raise log.error(f"TensorRT could not build {component}. {hint}")
        engine = new_runtime(trt, log).deserialize_cuda_engine(plan)
        if engine is None:
            raise log.error(f"TensorRT could not deserialise the {component} engine it just built.")
        check = weights_check(_total_weights(trt, engine), plan.nbytes, manifest.components[component]["weight_bytes"])
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "engine.plan").write_bytes(plan)
        (tmp / "build.log").write_text(log.text())
        insp = engine.create_engine_inspector()
        (tmp / "layers.json").write_text(insp.get_engine_information(trt.LayerInformationFormat.JSON))
        meta = {
            "component": component,
            "artifact": str(artifact),
            "export_key": manifest.export_key,
            "tensorrt": target.trt_version,
            "gpu": target.gpu_name,
            "compute_capability": target.compute_capability,
            "config": config.resolved(),
            "profiles": [g.name for g in graphs],
            "total_weights_bytes": check.engine_bytes if check.source == "TOTAL_WEIGHTS_SIZE" else None,
            "weights_check": check.to_dict(),
            "device_memory_bytes": int(engine.device_memory_size_v2),
            "profile_device_memory_bytes": [
                int(engine.get_device_memory_size_for_profile_v2(k)) for k in range(len(graphs))
            ],
            "build_seconds": round(build_s, 1),
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(meta, indent=1))
        if config.timing_cache:
            _save_timing_cache(cfg, tc_path)
        os.replace(tmp, out)
        say(f"{component}: built in {build_s:.0f} s -> {out}")
        _weights_verdict(meta, component, strict_weights, say)
        return out


def _weights_verdict(meta: dict, component: str, strict: bool, say: Say) -> None:
    from varrt.engines.trt_config import WeightsCheck

    wc = meta.get("weights_check")
    if not wc:
        return
    message = WeightsCheck(wc["engine_bytes"], wc["onnx_bytes"], wc["source"]).message(component)
    if message and strict:
        raise EngineError(message + "; rebuild without --strict-weights to accept it")
    if message:
        say("warning: " + message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _save_timing_cache(cfg, tc_path: Path) -> None:
    tc_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(tc_path.with_name(tc_path.name + ".lock")):
        data = cfg.get_timing_cache().serialize()
        tmp_tc = tc_path.with_name(tc_path.name + f".{os.getpid()}.tmp")
        tmp_tc.write_bytes(bytes(data))
        os.replace(tmp_tc, tc_path)


def _total_weights(trt, engine) -> int | None:
    stat = getattr(getattr(trt, "EngineStat", None), "TOTAL_WEIGHTS_SIZE", None)
    return int(engine.get_engine_stat(stat)) if stat is not None else None  # binding from TensorRT 10.14


def build_artifact(
    artifact: str | os.PathLike,
    config: BuildConfig,
    say: Say = lambda _m: None,
    precision: str | None = None,
    strict_weights: bool = False,
) -> dict[str, Path]:
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    verify_files(artifact, manifest)
    if precision and precision != manifest.precision:
        raise ValueError(
            f"{artifact} holds {manifest.precision} graphs; TensorRT builds what the ONNX says (strongly "
            f"typed): export with --precision {precision} first"
        )
    if manifest.precision in QUANTIZED and manifest.precision not in TENSORRT_QUANTIZED:
        raise ValueError(
            f"{artifact} holds {manifest.precision} graphs, ONNX Runtime's CPU form (DynamicQuantizeLinear is not a "
            "TensorRT op): export with --precision int8 (Q/DQ) for TensorRT"
        )
    return {c: build_component(artifact, manifest, c, config, say, strict_weights) for c in manifest.components}
