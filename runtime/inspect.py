"""``varrt inspect``, ``varrt doctor``, ``varrt compare``: looking at artifacts, engines and the machine."""

from __future__ import annotations

import importlib
import json
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Group
from rich.table import Table

from varrt.export.artifact import MANIFEST, cache_dir, read_manifest, varrt_version
from varrt.runtime.console import table


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def inspect_path(path: Path) -> Group | Table:
    """An artifact directory, a TensorRT engine directory (from the cache) or a single ONNX file."""
    path = Path(path)
    if path.suffix == ".onnx":
        return _inspect_onnx(path)
    meta_path = path / MANIFEST
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{path}: no {MANIFEST} here; give an export directory, an engine directory "
            "(under $VARRT_CACHE/engines) or an .onnx file"
        )
    meta = json.loads(meta_path.read_text())
    if "component" in meta and (path / "engine.plan").exists():
        return _inspect_engine(path, meta)
    return _inspect_artifact(path)


def _inspect_artifact(path: Path) -> Group:
    m = read_manifest(path)
    cfg = m.var
    itemsize = torch.tensor([], dtype=getattr(torch, m.precision)).element_size()
    kv = 2 * m.batch * cfg.depth * 2 * cfg.heads * m.kv_capacity * cfg.head_dim * itemsize
    summary = table(
        f"{path}",
        ["", ""],
        [
            [
                "model",
                f"{cfg.label}: depth {cfg.depth}, width {cfg.width}, heads {cfg.heads}, "
                f"schedule {list(cfg.patch_nums)}",
            ],
            ["precision / opset", f"{m.precision} / {m.opset}"],
            ["batch / KV capacity", f"{m.batch} / {m.kv_capacity} slots ({_mib(kv)} of KV cache with CFG)"],
            ["weights.bin", _mib(m.files["weights.bin"]["bytes"])],
            [
                "components",
                ", ".join(f"{c} ({_mib(v.get('weight_bytes'))} of weights)" for c, v in m.components.items()),
            ],
            ["TensorRT weights", _trt_weights(m)],
            ["plans", ", ".join(p["name"] for p in m.plans)],
            [
                "source",
                json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "sha256"} for k, v in m.source.items()}),
            ],
            ["validation", json.dumps({k: (v if not isinstance(v, dict) else "...") for k, v in m.validation.items()})],
            ["exported", f"{m.created} by varrt {m.varrt_version}"],
        ],
    )
    graphs = table(
        "static graphs (one TensorRT profile each)",
        ["graph", "inputs", "outputs"],
        [
            [
                g.name,
                ", ".join(f"{t.name}{list(t.shape)}:{t.dtype}" for t in g.inputs),
                ", ".join(f"{t.name}{list(t.shape)}" for t in g.outputs),
            ]
            for g in m.graphs
        ],
    )
    return Group(summary, graphs)


def _trt_weights(m) -> str:
    """What the TensorRT backend holds on the GPU for this artifact, beyond activations and KV."""
    from varrt.engines.trt_config import engine_weight_bytes, scratch_bytes

    per = engine_weight_bytes(m)
    text = (
        f"{_mib(sum(per.values()))} with every engine loaded (one engine per component, each with its own copy "
        "of the weights it uses: "
        + " + ".join(f"{c} {_mib(n)}" for c, n in per.items())
        + "; engines load on first use)"
    )
    scratch = scratch_bytes(m)
    return text + (f"; {_mib(scratch)} of scratch for FastVAR's left-out deltas" if scratch else "")


def _inspect_engine(path: Path, meta: dict) -> Table:
    rows = [[k, json.dumps(v) if isinstance(v, dict | list) else str(v)] for k, v in meta.items()]
    rows.append(["engine.plan", _mib((path / "engine.plan").stat().st_size)])
    layers = path / "layers.json"
    if layers.exists():
        info = json.loads(layers.read_text())
        rows.append(["layers", str(len(info.get("Layers", [])))])
    return table(str(path), ["", ""], rows)


def _inspect_onnx(path: Path) -> Table:
    import collections

    import onnx

    from varrt.export.onnx_export import weight_bytes
    from varrt.export.trt_ops import unsupported_ops

    model = onnx.load(str(path), load_external_data=False)

    def dims(vi) -> str:
        return "[" + ", ".join(str(d.dim_value or d.dim_param) for d in vi.type.tensor_type.shape.dim) + "]"

    ops = collections.Counter(n.op_type for n in model.graph.node)
    problems = unsupported_ops(model)
    return table(
        str(path),
        ["", ""],
        [
            ["opset", ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)],
            ["inputs", ", ".join(f"{i.name}{dims(i)}" for i in model.graph.input)],
            ["outputs", ", ".join(f"{o.name}{dims(o)}" for o in model.graph.output)],
            ["nodes", f"{len(model.graph.node)}: " + ", ".join(f"{k} {v}" for k, v in ops.most_common())],
            ["weights", _mib(weight_bytes(model))],
            ["TensorRT op check", "passed" if not problems else "; ".join(problems)],
        ],
    )


# ------------------------------------------------------------------------------------------ doctor
def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:
        return f"not importable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _driver() -> str:
    if not shutil.which("nvidia-smi"):
        return "no nvidia-smi on PATH"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"


@dataclass(frozen=True)
class MachineFacts:
    """What ``varrt doctor`` found; :func:`missing` turns it into what each backend lacks."""

    torch_cuda: str | None  # torch's CUDA build (None: a CPU-only torch)
    gpus: tuple[str, ...]  # visible to torch
    driver: str  # nvidia-smi's answer, or why there is none
    ort_providers: tuple[str, ...] | None  # None: onnxruntime not importable
    tensorrt: str | None  # the usable version, or None
    tensorrt_problem: str = ""  # why TensorRT is unusable


GPU_RECIPE = "README, 'On an NVIDIA GPU'"


def missing(f: MachineFacts) -> dict[str, list[str]]:
    """Per backend, what this machine lacks to run it (empty: ready), each with its fix."""
    gpu: list[str] = []
    if f.torch_cuda is None:
        gpu.append("a CUDA build of torch (this one is CPU-only): pip install torch from PyTorch's CUDA index")
    elif not f.gpus:
        gpu.append(f"a GPU visible to torch (CUDA {f.torch_cuda} build; driver: {f.driver})")
    ort = [] if f.ort_providers is not None else ["onnxruntime: pip install -e '.[cpu]' (or '.[gpu]' on a GPU)"]
    ort_gpu = list(gpu)
    if f.ort_providers is not None and "CUDAExecutionProvider" not in f.ort_providers:
        ort_gpu.append("onnxruntime-gpu (CUDAExecutionProvider): pip uninstall onnxruntime; pip install -e '.[gpu]'")
    trt = list(gpu)
    if f.tensorrt is None:
        trt.append(f"TensorRT 10.12-11.x ({f.tensorrt_problem or 'not installed'}): pip install -e '.[gpu,trt-cu12]'")
    return {"ort (CPU)": ort, "ort (CUDA)": ort_gpu or ort, "torch-graph": gpu, "trt": trt}


def machine_facts() -> MachineFacts:
    gpus = ()
    if torch.cuda.is_available():
        gpus = tuple(
            f"{torch.cuda.get_device_name(i)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())
        )
    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except ImportError:
        providers = None
    version, problem = None, ""
    try:
        from varrt.engines.tensorrt_engine import import_tensorrt

        trt = import_tensorrt()
        version = f"{trt.__version__} (ONNX parser {trt.get_nv_onnx_parser_version()})"
    except Exception as e:
        problem = str(e).split(";")[0]
    return MachineFacts(torch.version.cuda, gpus, _driver(), providers, version, problem)


def doctor() -> Table:
    f = machine_facts()
    rows = [
        ["varrt", varrt_version()],
        ["python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})"],
        ["torch", f"{torch.__version__} (CUDA build: {f.torch_cuda or 'none'})"],
        ["CUDA GPUs", "; ".join(f.gpus) or "none visible to torch"],
        ["NVIDIA driver", f.driver],
        [
            "onnxruntime",
            "not importable"
            if f.ort_providers is None
            else f"{_version('onnxruntime')}; providers: " + ", ".join(f.ort_providers),
        ],
    ]
    for name in ("onnx", "onnxscript", "polygraphy", "onnx_graphsurgeon"):
        rows.append([name, _version(name)])
    rows.append(["tensorrt", f"{f.tensorrt}; usable" if f.tensorrt else f"unusable: {f.tensorrt_problem}"])
    for backend, lacks in missing(f).items():
        rows.append([f"backend {backend}", "ready" if not lacks else "missing: " + " | ".join(lacks)])
    rows.append(["GPU setup", GPU_RECIPE])
    rows.append(["cache", str(cache_dir())])
    return table("varrt doctor", ["", ""], rows)


# ------------------------------------------------------------------------------------------ compare
TOLERANCES = {"float32": (1e-4, 1e-3), "float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2)}  # (atol, rtol)


def compare_backends(args, make_engine: Callable[[str], object]) -> Table:
    """Every graph (or --graphs) of an artifact on each backend vs the first, with polygraphy's Comparator."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    from varrt.engines.compare import polygraphy_runner, random_feeds

    m = read_manifest(args.artifact)
    names = args.graphs.split(",") if args.graphs else [g.name for g in m.graphs]
    graphs = [g for g in m.graphs if g.name in names]
    if len(graphs) != len(names):
        raise ValueError(f"unknown graph(s) {sorted(set(names) - {g.name for g in graphs})}; see `varrt inspect`")
    backends = args.backends.split(",")
    if len(backends) < 2:
        raise ValueError("--backends needs a reference and at least one other backend, e.g. torch,ort")
    engines = {b: make_engine(b) for b in backends}
    atol, rtol = TOLERANCES[m.precision]
    G_LOGGER.module_severity = G_LOGGER.ERROR
    rows = []
    ok_all = True
    for graph in graphs:
        feeds = random_feeds(graph, m.var.schedule.total_tokens, m.var.num_classes, args.seed)
        loader = [{k: v.numpy() for k, v in feeds.items()}]
        runners = [polygraphy_runner(engines[b], graph) for b in backends]
        results = Comparator.run(runners, data_loader=loader)
        for other in backends[1:]:
            acc = Comparator.compare_accuracy(
                results,
                compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="max"),
                comparisons=[(0, backends.index(other))],
            )
            ref, got = results[0][1][0], results[backends.index(other)][1][0]
            worst = max(float(abs(ref[k] - got[k]).max() / max(abs(ref[k]).max(), 1e-12)) for k in ref)
            ok_all &= bool(acc)
            rows.append([graph.name, f"{backends[0]} vs {other}", "pass" if acc else "FAIL", f"{worst:.2e}"])
    title = (
        f"{args.artifact} ({m.precision}): polygraphy SimpleCompareFunc(atol={atol}, rtol={rtol}, "
        f"check_error_stat=max) — {'all pass' if ok_all else 'FAILURES'}"
    )
    return table(title, ["graph", "backends", "result", "max |diff| / max |ref|"], rows)
