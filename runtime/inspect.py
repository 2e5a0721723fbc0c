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

import numpy as np
import torch
from rich.console import Group
from rich.table import Table

from varrt.export.artifact import MANIFEST, cache_dir, read_manifest, varrt_version
from varrt.export.quantize import QUANTIZED, io_precision
from varrt.runtime.console import table


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def inspect_path(path: Path, verify: bool = False) -> Group:
    """An artifact directory, a TensorRT engine directory (from the cache) or a single ONNX file, as tables.
    An artifact's files are checked as an engine checks them (``verify``: every byte read again)."""
    info = describe_path(path, verify)
    parts = [table(info["path"], ["", ""], [[k, v] for k, v in info["summary"].items()])]
    if info.get("graphs"):
        rows = [[g["name"], ", ".join(g["inputs"]), ", ".join(g["outputs"])] for g in info["graphs"]]
        parts.append(
            table(
                "static graphs (one TensorRT profile each; ONNX Runtime also runs other batch sizes)",
                ["graph", "inputs", "outputs"],
                rows,
            )
        )
    return Group(*parts)


def describe_path(path: Path, verify: bool = False) -> dict:
    """What ``varrt inspect`` shows, as data (``--json``): kind, path, summary, and the static graphs."""
    path = Path(path)
    if path.suffix == ".onnx":
        return _inspect_onnx(path)
    meta_path = path / MANIFEST
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{path}: no {MANIFEST} here; give an export directory, an engine directory "
            "(under $VARRT_CACHE/engines) or an .onnx file"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); the artifact is damaged: export it again") from None
    if isinstance(meta, dict) and "component" in meta and (path / "engine.plan").exists():
        return _inspect_engine(path, meta)
    return _inspect_artifact(path, verify)


def _checks(path: Path, m, verify: bool) -> dict[str, str]:
    """What is checked about the artifact, and the result now."""
    from varrt.export.artifact import FILE_CHECK, ArtifactError, parity_state, verify_files

    try:
        verify_files(path, m, full=verify)
        files = "ok"
    except ArtifactError as e:
        files = f"FAILED: {e}"
    how = "every byte read again (--verify)" if verify else FILE_CHECK
    parity = m.validation.get("parity", {})
    state = parity_state(m)
    detail = {
        "passed": f"ONNX Runtime vs torch on every static graph within {parity.get('tolerance')} (relative), "
        "no NaN/Inf",
        "measured": "quantized: ONNX Runtime vs fp32 torch on every static graph, no NaN/Inf, max relative "
        f"error {max(parity.get('quantized_vs_fp32_max_relative_error', {}).values(), default=0):.3g} (no tolerance)",
        "skipped": str(parity.get("skipped")),
        "not run": "exported with --no-validate: a validating export checks it before reusing it",
    }[state]
    static = "passed" if m.validation.get("static_shapes") == "passed" else "not recorded"
    graphs = (
        f"ONNX checker {m.validation.get('onnx_checker', '?')}, TensorRT ops {m.validation.get('tensorrt_ops', '?')} "
        "at export; "
        f"strict shape inference at every static shape {static}"
    )
    return {"files": f"{files}: {how}", "parity": f"{state}: {detail}", "graph checks": graphs}


def _inspect_artifact(path: Path, verify: bool = False) -> dict:
    m = read_manifest(path)
    if m.family == "infinity":
        cfg, name, schedule = m.infinity, m.infinity.name or "infinity", [list(g) for g in m.infinity_schedule.grids]
    else:
        cfg, name, schedule = m.var, m.var.label, list(m.var.patch_nums)
    itemsize = torch.tensor([], dtype=getattr(torch, io_precision(m.precision))).element_size()
    kv = 2 * m.batch * cfg.depth * 2 * cfg.heads * m.kv_capacity * cfg.head_dim * itemsize
    summary = {
        "model": f"{name}: depth {cfg.depth}, width {cfg.width}, heads {cfg.heads}, schedule {schedule}",
        "precision / opset": f"{m.precision} / {m.opset}",
        "batch / KV capacity": f"{m.batch} / {m.kv_capacity} slots ({_mib(kv)} of KV cache with CFG)",
        "weights.bin": _mib(m.files["weights.bin"]["bytes"]),
        "components": ", ".join(f"{c} ({_mib(v.get('weight_bytes'))} of weights)" for c, v in m.components.items()),
        **({"TensorRT weights": _trt_weights(m)} if m.family == "var" else {}),
        "plans": ", ".join(p["name"] for p in m.plans),
        "source": json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "sha256"} for k, v in m.source.items()}),
        **_checks(path, m, verify),
        "exported": f"{m.created} by varrt {m.varrt_version}",
    }
    graphs = [
        {
            "name": g.name,
            "inputs": [f"{t.name}{list(t.shape)}:{t.dtype}" for t in g.inputs],
            "outputs": [f"{t.name}{list(t.shape)}" for t in g.outputs],
        }
        for g in m.graphs
    ]
    return {"kind": "artifact", "path": str(path), "summary": summary, "graphs": graphs}


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
    left_out = "outputs graphs leave out (FastVAR's deltas, StageVAR's state)"
    return text + (f"; {_mib(scratch)} of scratch for {left_out}" if scratch else "")


def _inspect_engine(path: Path, meta: dict) -> dict:
    summary = {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in meta.items()}
    summary["engine.plan"] = _mib((path / "engine.plan").stat().st_size)
    layers = path / "layers.json"
    if layers.exists():
        info = json.loads(layers.read_text())
        summary["layers"] = str(len(info.get("Layers", [])))
    return {"kind": "engine", "path": str(path), "summary": summary}


def _inspect_onnx(path: Path) -> dict:
    import collections

    import onnx
    from google.protobuf.message import DecodeError

    from varrt.export.onnx_export import weight_bytes
    from varrt.export.trt_ops import unsupported_ops

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not an ONNX model; export it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path} is not a readable ONNX model (truncated or corrupt? {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}); export it again"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ValueError(f"{path} parses as an ONNX message but holds no graph (corrupt?); export it again")

    def dims(vi) -> str:
        return "[" + ", ".join(str(d.dim_value or d.dim_param) for d in vi.type.tensor_type.shape.dim) + "]"

    ops = collections.Counter(n.op_type for n in model.graph.node)
    problems = unsupported_ops(model)
    summary = {
        "opset": ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
        "inputs": ", ".join(f"{i.name}{dims(i)}" for i in model.graph.input),
        "outputs": ", ".join(f"{o.name}{dims(o)}" for o in model.graph.output),
        "nodes": f"{len(model.graph.node)}: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()),
        "weights": _mib(weight_bytes(model)),
        "TensorRT op check": "passed" if not problems else "; ".join(problems),
    }
    return {"kind": "onnx", "path": str(path), "summary": summary}


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
    """What this machine can run, as a table."""
    return table("varrt doctor", ["", ""], [[k, v] for k, v in doctor_info().items()])


def doctor_info() -> dict[str, str]:
    """What ``varrt doctor`` checks, as data (``--json``)."""
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
    return dict(rows)


# ------------------------------------------------------------------------------------------ compare
#: (atol, rtol) per float precision; a quantized artifact has none (see ``compare_backends``)
TOLERANCES = {"float32": (1e-4, 1e-3), "float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2)}


def compare_backends(args, make_engine: Callable[[str], object]) -> tuple[Table, bool]:
    """Every graph (or --graphs) of an artifact (either family) on each backend vs the first, with
    polygraphy's Comparator, on the same random feeds (prompt-like text inputs for Infinity).

    A quantized artifact (int8, int8-cpu, fp8) is measured, not judged: its graphs differ from the
    fp32 torch reference by what the recipe costs, which random feeds do not bound (the export's
    validation records the same measure; fidelity on real generations is tools/bench_quantized.py's).
    Its rows say ``measured`` and only NaN/Inf fails them. Returns the table and whether every row
    passed (``varrt compare`` exits 1 otherwise, so that a script can rely on it)."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    from varrt.engines.compare import polygraphy_runner, random_feeds, text_vocab

    m = read_manifest(args.artifact)
    names = args.graphs.split(",") if args.graphs else [g.name for g in m.graphs]
    graphs = [g for g in m.graphs if g.name in names]
    if len(graphs) != len(names):
        raise ValueError(f"unknown graph(s) {sorted(set(names) - {g.name for g in graphs})}; see `varrt inspect`")
    backends = args.backends.split(",")
    if len(backends) < 2:
        raise ValueError("--backends needs a reference and at least one other backend, e.g. torch,ort")
    tolerance = None if m.precision in QUANTIZED else TOLERANCES[m.precision]
    engines = {b: make_engine(b) for b in backends}
    if m.family == "infinity":  # positions are (level, row, col): no token count, no classes
        tokens, classes, vocab = m.infinity_schedule.total_tokens, 0, text_vocab(engines.values())
    else:
        tokens, classes, vocab = m.var.schedule.total_tokens, m.var.num_classes, None
    G_LOGGER.module_severity = G_LOGGER.ERROR
    rows = []
    ok_all = True
    for graph in graphs:
        feeds = random_feeds(graph, tokens, classes, args.seed, vocab)
        loader = [{k: v.numpy() for k, v in feeds.items()}]
        runners = [polygraphy_runner(engines[b], graph) for b in backends]
        results = Comparator.run(runners, data_loader=loader)
        for other in backends[1:]:
            ref, got = results[0][1][0], results[backends.index(other)][1][0]
            finite = all(np.isfinite(ref[k]).all() and np.isfinite(got[k]).all() for k in ref)
            worst = max(float(abs(ref[k] - got[k]).max() / max(abs(ref[k]).max(), 1e-12)) for k in ref)
            if tolerance is None:
                ok = finite
                result = "measured" if ok else "FAIL (NaN/Inf)"
            else:
                atol, rtol = tolerance
                ok = finite and bool(
                    Comparator.compare_accuracy(
                        results,
                        compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="max"),
                        comparisons=[(0, backends.index(other))],
                    )
                )
                result = "pass" if ok else "FAIL"
            ok_all &= ok
            rows.append([graph.name, f"{backends[0]} vs {other}", result, f"{worst:.2e}"])
    if tolerance is None:
        title = (
            f"{args.artifact} ({m.precision}, quantized): error vs {backends[0]} measured, no tolerance (fidelity "
            f"on real generations: tools/bench_quantized.py) — {'no NaN/Inf' if ok_all else 'FAILURES'}"
        )
    else:
        atol, rtol = tolerance
        title = (
            f"{args.artifact} ({m.precision}): polygraphy SimpleCompareFunc(atol={atol}, rtol={rtol}, "
            f"check_error_stat=max) — {'all pass' if ok_all else 'FAILURES'}"
        )
    return table(title, ["graph", "backends", "result", "max |diff| / max |ref|"], rows), ok_all
