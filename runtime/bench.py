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
from varrt.runtime.generate import generate
from varrt.runtime.policies import Policy, make_policy
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


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
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
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in texts.items():
        p = stem.with_suffix(suffix)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
        paths.append(p)
    return paths


def kv_bytes(engine: Engine, policy: Policy, batch: int) -> int:
    cfg = engine.var_config
    cap = engine.kv_capacity or max(p.capacity(cfg.schedule) for p in policy.plans)
    itemsize = torch.tensor([], dtype=getattr(torch, engine.precision)).element_size()
    return 2 * batch * cfg.depth * 2 * cfg.heads * cap * cfg.head_dim * itemsize


def run_bench(
    engines: dict[str, Engine],
    policy_specs: Sequence[str],
    config: BenchConfig,
    weight_bytes: dict[str, int],
    say: Callable[[str], None] = lambda _m: None,
) -> dict:
    """Time every (backend, policy); ``engines`` maps backend name -> engine (all with the same model)."""
    first = next(iter(engines.values()))
    cfg = first.var_config
    policies = [make_policy(s, cfg) for s in policy_specs]
    if "full" not in [p.name for p in policies]:
        policies.insert(0, make_policy("full", cfg))
    keys = [(b, p) for b in engines for p in policies]
    runs: dict[tuple[str, str], dict] = {
        (b, p.name): {"total": [], "scales": [], "decode": [], "condition": [], "flops": [], "rss": 0} for b, p in keys
    }
    for rep in range(config.warmup + config.repeat):
        timed = rep >= config.warmup
        for backend, policy in keys:
            engine = engines[backend]
            t0 = time.perf_counter()
            result = generate(engine, config.labels, seed=config.seed, sampling=config.sampling, policy=policy)
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
        engine = engines[backends[-1]]
        fidelity = evaluate(
            engine,
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


def markdown(report: dict) -> str:
    m, model = report["machine"], report["model"]
    lines = [
        f"# {model['name']} — {', '.join(sorted({r['backend'] for r in report['results']}))}",
        "",
        f"- date {report['date']}, commit `{report['commit']}`, command `{report['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
        + (f", GPU {m['gpu']['name']} (sm {m['gpu']['sm']})" if "gpu" in m else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- model: {model['name']} (depth {model['depth']}, width {model['width']}, schedule {model['schedule']}); "
        f"weights: **{model['weights']}**",
        f"- batch {report['batch']} with CFG; warm-up {report['warmup']}, repeats {report['repeat']}; "
        "times are medians (p10-p90)",
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
        "| backend | policy | " + " | ".join(f"s{i}" for i in range(len(report["model"]["schedule"]))) + " | decode |",
        "|---|---|" + "---|" * (len(report["model"]["schedule"]) + 1),
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['backend']} | {r['policy']} | "
            + " | ".join(f"{x['median']:.1f}" for x in r["scale_ms"])
            + f" | {r['decode_ms']['median']:.1f} |"
        )
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


def plots(report: dict, stem: Path) -> list[Path]:
    """Stacked per-scale latency bars per (backend, policy); speed-up vs SSIM when fidelity exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(report["results"])), 4))
    labels = [f"{r['backend']}\n{r['policy']}" for r in report["results"]]
    bottoms = np.zeros(len(labels))
    n_scales = len(report["model"]["schedule"])
    cmap = plt.get_cmap("viridis", n_scales + 1)
    for si in range(n_scales):
        vals = np.array([r["scale_ms"][si]["median"] for r in report["results"]])
        ax.bar(labels, vals, bottom=bottoms, color=cmap(si), label=f"scale {si}")
        bottoms += vals
    dec = np.array([r["decode_ms"]["median"] for r in report["results"]])
    ax.bar(labels, dec, bottom=bottoms, color="lightgrey", label="decode")
    ax.set_ylabel("median ms")
    ax.set_title(f"{report['model']['name']}: per-scale latency (batch {report['batch']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = stem.with_name(stem.name + "-scales.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    if report["fidelity"]:
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, f in report["fidelity"].items():
            ax.scatter(f["speedup"], f["ssim"]["mean"], s=40)
            ax.annotate(name, (f["speedup"], f["ssim"]["mean"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("speed-up vs full (end-to-end)")
        ax.set_ylabel("SSIM vs full (mean)")
        ax.set_title("speed vs fidelity")
        fig.tight_layout()
        p = stem.with_name(stem.name + "-speedup-ssim.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out


def write_report(report: dict, directory: Path, name: str) -> list[Path]:
    stem = directory / name
    paths = write_results(stem, {".json": json.dumps(report, indent=1), ".md": markdown(report)})
    return paths + plots(report, stem)
