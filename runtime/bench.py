"""``varrt bench``: latency of policies x backends, measured side by side in one run.

Every repeat runs each (backend, policy) once, interleaved, so drift of the machine hits all of
them alike and the ratios are taken within one run. Reported: end-to-end and per-scale medians with
their spread (p10-p90), the speed-up of each policy over ``full`` on the same backend, the ratio
between backends, transformer FLOPs, memory (weights, KV cache, process peak), and — when the
weights mean something — SSIM/PSNR against ``full``. JSON + markdown (+ PNG plots) go to
``benchmarks/results/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from varrt.engines.base import Engine
from varrt.runtime.evaluate import evaluate, sample_flops
from varrt.runtime.outputs import write_files
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.policies import Policy
from varrt.runtime.sampling import SamplingConfig


@dataclass
class BenchConfig:
    labels: list[int]
    warmup: int = 1
    repeat: int = 5
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    fidelity_seeds: int = 0  # 0: no fidelity (random weights say nothing about it)
    weights: str = ""  # what the weights are ("random (var-d16)", "demo model", a checkpoint)


def stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(v)),
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


#: the CPU features that decide which int8 form is fast (u8 x s8 in saturating int16 without VNNI)
#: and whether bfloat16 has instructions
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")


def machine() -> dict:
    cpu, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = [f for f in CPU_FLAGS if f in line.split(":", 1)[1].split()]
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "sm": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)}
    return info


def versions() -> dict:
    import onnx

    from varrt.export.artifact import varrt_version

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # an extra
        ort = None
    return {
        "varrt": varrt_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": ort,
        "onnx": onnx.__version__,
    }


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(warmup: int, repeat: int) -> dict:
    """What every benchmark result records about where and how it was measured."""
    command = " ".join(["varrt", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("varrt") else " ".join(sys.argv)
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "warmup": warmup,
        "repeat": repeat,
    }


def write_results(stem: Path, texts: dict[str, str]) -> list[Path]:
    """``stem`` + each suffix with its text, each written to a temporary name first, then renamed."""
    return write_files([(stem.with_suffix(sfx), lambda tmp, t=text: tmp.write_text(t)) for sfx, text in texts.items()])


def publish(stem: Path, report: dict, text: str, say: Callable[[str], None]) -> list[Path]:
    """A benchmark tool's ending: its report as ``stem``.json and its markdown ``text`` as
    ``stem``.md, the markdown printed, the files named through ``say``."""
    paths = write_results(stem, {".json": json.dumps(report, indent=1), ".md": text})
    print(text)
    say("wrote " + ", ".join(str(p) for p in paths))
    return paths


def kv_bytes(engine: Engine, policy: Policy, batch: int) -> int:
    cfg = engine.var_config
    cap = engine.kv_capacity or max(p.capacity(cfg.schedule) for p in policy.plans)
    itemsize = torch.tensor([], dtype=getattr(torch, engine.precision)).element_size()
    return 2 * batch * cfg.depth * 2 * cfg.heads * cap * cfg.head_dim * itemsize


def run_bench(
    pipelines: dict[str, Pipeline],
    policy_specs: Sequence[str],
    config: BenchConfig,
    weight_bytes: dict[str, int],
    say: Callable[[str], None] = lambda _m: None,
) -> dict:
    """Time every (backend, policy); ``pipelines`` maps backend name -> pipeline (all with the same model)."""
    first = next(iter(pipelines.values()))
    engines = {b: p.engine for b, p in pipelines.items()}
    cfg = first.engine.var_config
    policies = [first.policy(s) for s in policy_specs]
    if "full" not in [p.name for p in policies]:
        policies.insert(0, first.policy("full"))
    keys = [(b, p) for b in engines for p in policies]
    runs: dict[tuple[str, str], dict] = {
        (b, p.name): {"total": [], "scales": [], "decode": [], "condition": [], "flops": [], "rss": 0} for b, p in keys
    }
    for rep in range(config.warmup + config.repeat):
        timed = rep >= config.warmup
        for backend, policy in keys:
            engine = engines[backend]
            t0 = time.perf_counter()
            pipe = pipelines[backend]
            result = pipe.generate(config.labels, seed=config.seed, sampling=config.sampling, policy=policy)
            wall = time.perf_counter() - t0
            r = runs[(backend, policy.name)]
            if timed:
                r["total"].append(wall)
                r["scales"].append(result.scale_seconds)
                r["decode"].append(result.seconds["decode"])
                r["condition"].append(result.seconds["condition"])
                r["flops"].append(sample_flops(engine, policy, result))
            r["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        say(f"{'warm-up' if not timed else 'repeat'} {rep + 1 - (config.warmup if timed else 0)} done")

    results = []
    for backend, policy in keys:
        r = runs[(backend, policy.name)]
        per_scale = np.array(r["scales"])
        full_median = float(np.median(runs[(backend, "full")]["total"]))
        entry = {
            "backend": backend,
            "policy": policy.name,
            "policy_options": policy.options,
            "seconds": stats(r["total"]),
            "scale_ms": [stats(per_scale[:, si] * 1e3) for si in range(per_scale.shape[1])],
            "decode_ms": stats(np.array(r["decode"]) * 1e3),
            "condition_ms": stats(np.array(r["condition"]) * 1e3),
            "speedup_vs_full": full_median / float(np.median(r["total"])),
            "transformer_seconds": stats(per_scale.sum(1)),
            "transformer_speedup_vs_full": float(np.median(np.array(runs[(backend, "full")]["scales"]).sum(1)))
            / float(np.median(per_scale.sum(1))),
            "flops_per_image": float(np.mean(r["flops"])),
            "flops_ratio_vs_full": float(np.mean(r["flops"])) / float(np.mean(runs[(backend, "full")]["flops"])),
            "memory": {
                "weights_bytes": weight_bytes.get(backend),
                "kv_cache_bytes": kv_bytes(engines[backend], policy, len(config.labels)),
                "process_peak_rss_bytes": r["rss"],
            },
            "host_overhead": "n/a: CPU execution (wall time is device time)"
            if engines[backend].device.type == "cpu"
            else "see scale_ms (synchronised per scale)",
        }
        results.append(entry)
    backends = list(engines)
    ratios = {}
    if len(backends) > 1:
        a, b = backends[0], backends[1]
        for p in policies:
            ra, rb = runs[(a, p.name)]["total"], runs[(b, p.name)]["total"]
            ratios[f"{a}/{b} ({p.name})"] = float(np.median(ra)) / float(np.median(rb))
    fidelity = {}
    if config.fidelity_seeds:
        say(f"fidelity over {config.fidelity_seeds} seeds")
        fidelity = evaluate(
            pipelines[backends[-1]],
            [p for p in policies if p.name != "full"],
            config.labels,
            list(range(1000, 1000 + config.fidelity_seeds)),
            config.sampling,
        )
    return {
        **provenance(config.warmup, config.repeat),
        "model": {
            "name": cfg.label,
            "depth": cfg.depth,
            "width": cfg.width,
            "schedule": list(cfg.patch_nums),
            "weights": config.weights,
        },
        "batch": len(config.labels),
        "labels": config.labels,
        "sampling": {"cfg": config.sampling.cfg, "top_k": config.sampling.top_k, "top_p": config.sampling.top_p},
        "results": results,
        "backend_ratios": ratios,
        "fidelity": fidelity,
    }


def provenance_lines(report: dict) -> list[str]:
    """The markdown lines saying when, from which commit and command, and where a result was measured."""
    m = report["machine"]
    return [
        f"- date {report['date']}, commit `{report['commit']}`, command `{report['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
        + (f", GPU {m['gpu']['name']} (sm {m['gpu']['sm']})" if "gpu" in m else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]


def per_scale_table(
    heads: Sequence[str], rows: Sequence[tuple[Sequence[str], Sequence[dict], dict | None]], digits: int = 1
) -> list[str]:
    """The per-scale medians table every benchmark prints: the leading columns ``heads`` (backend,
    policy, ...), then one column per scale (each a :func:`stats` dict) and, where rows have it,
    the decoder's."""
    n = max(len(scales) for _, scales, _ in rows)
    decode = any(d is not None for _, _, d in rows)
    cols = [*heads, *(f"s{i}" for i in range(n)), *(["decode"] if decode else [])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for lead, scales, dec in rows:
        cells = [*lead, *(f"{x['median']:.{digits}f}" for x in scales)]
        if decode:
            cells.append(f"{dec['median']:.{digits}f}" if dec is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    model = report["model"]
    lines = [
        f"# {model['name']} — {', '.join(sorted({r['backend'] for r in report['results']}))}",
        "",
        *provenance_lines(report),
        f"- model: {model['name']} (depth {model['depth']}, width {model['width']}, schedule {model['schedule']}); "
        f"weights: **{model['weights']}**",
        f"- batch {report['batch']} with CFG; warm-up {report['warmup']}, repeats {report['repeat']}; "
        "times are medians (p10-p90)",
        *(
            ["- precision: " + ", ".join(f"{b} {p}" for b, p in report["precision"].items())]
            if "precision" in report
            else []
        ),
        "",
        "| backend | policy | end-to-end s | speed-up | transformer s | transformer speed-up | GFLOPs/image "
        "| FLOPs vs full | KV MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        s, t = r["seconds"], r["transformer_seconds"]
        lines.append(
            f"| {r['backend']} | {r['policy']} | {s['median']:.3f} ({s['p10']:.3f}-{s['p90']:.3f}) | "
            f"{r['speedup_vs_full']:.2f}x | {t['median']:.3f} ({t['p10']:.3f}-{t['p90']:.3f}) | "
            f"{r['transformer_speedup_vs_full']:.2f}x | {r['flops_per_image'] / 1e9:.2f} | "
            f"{r['flops_ratio_vs_full']:.2f} | {r['memory']['kv_cache_bytes'] / 2**20:.1f} |"
        )
    if report["backend_ratios"]:
        lines += [
            "",
            "Backend ratios (median end-to-end, same run): "
            + "; ".join(f"{k} = {v:.2f}" for k, v in report["backend_ratios"].items()),
        ]
    lines += [
        "",
        "Per-scale medians (ms):",
        "",
        *per_scale_table(
            ("backend", "policy"),
            [((r["backend"], r["policy"]), r["scale_ms"], r["decode_ms"]) for r in report["results"]],
        ),
    ]
    if report["fidelity"]:
        lines += [
            "",
            "Fidelity against `full` (same seeds and classes):",
            "",
            "| policy | SSIM mean | SSIM worst 5% | PSNR mean dB | PSNR worst 5% | images |",
            "|---|---|---|---|---|---|",
        ]
        for name, f in report["fidelity"].items():
            lines.append(
                f"| {name} | {f['ssim']['mean']:.4f} | {f['ssim']['worst5']:.4f} | {f['psnr']['mean']:.2f} | "
                f"{f['psnr']['worst5']:.2f} | {f['ssim']['n']} |"
            )
    elif "random" in model["weights"]:
        lines += ["", "No fidelity figures: the weights are random, and random weights say nothing about fidelity."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, directory: Path, name: str) -> list[Path]:
    stem = directory / name
    paths = write_results(stem, {".json": json.dumps(report, indent=1), ".md": markdown(report)})
    from varrt.runtime.bench_plots import plots

    return paths + plots(report, stem)
