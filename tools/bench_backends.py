"""Every policy on eager torch and ONNX Runtime, side by side: ``python tools/bench_backends.py``.

One command reproduces the committed table (benchmarks/results/backends.{json,md} and a per-scale
plot per setting): the bundled demo model at batch 1 and 10 and var-d16's size at batch 1 (random
weights), every policy, both backends. Within every repeat each policy runs on both backends back
to back (the backend order alternates from repeat to repeat), so the drift of a shared machine hits
both alike; ratios are taken per repeat and reported as median (p10-p90).

Besides end-to-end times it reports where the time of ONNX Runtime goes: the engine's calls
(transformer, decoder), the runtime's own work between them (sampling, f_hat, policy decisions),
and — from one extra generation with ORT's profiler on — the host-overhead share of a transformer
call (wall time of ``engine.run`` not spent in ORT's kernels). For each policy it compares ORT's
speed-up over ORT's own full plan with the ideal one its FLOPs allow with the decoder counted:
``T_full / (f * (T_full - T_decode) + T_decode)``, f = transformer FLOPs vs full. It also counts the
static transformer shapes of each export with bucketed group sizes and without (one per size 1..B),
and the FLOPs the padding of split groups adds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.exporter import ExportConfig
from varrt.runtime.artifacts import ExportRequest, ensure_artifact, random_source
from varrt.runtime.bench import per_scale_table, provenance, provenance_lines, stats, write_results
from varrt.runtime.bench_plots import plots
from varrt.runtime.evaluate import sample_flops
from varrt.runtime.flops import plan_flops
from varrt.runtime.generate import Generation, generate
from varrt.runtime.plan import group_sizes, kv_capacity, step_shapes
from varrt.runtime.policies import Policy, make_policy
from varrt.runtime.sampling import SamplingConfig

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
POLICIES = ("full", "fastvar", "skipvar", "ld-pruning", "stepvar", "toprovar", "stagevar", "skipvar+stepvar")
IMAGENET_LABELS = (207, 88, 360, 980, 1, 292, 812, 417)


@dataclass(frozen=True)
class Setting:
    model: str  # "demo" (the bundled, trained demo model) or a released architecture with random weights
    batch: int

    @property
    def weights(self) -> str:
        return "demo model (trained on colour emoji)" if self.model == "demo" else f"random ({self.model})"


SETTINGS = {"demo-b1": Setting("demo", 1), "demo-b10": Setting("demo", 10), "var-d16-b1": Setting("var-d16", 1)}


class TimedEngine:
    """An engine that records the wall time of every call, by component (the runtime's time is
    the rest of each scale)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, float]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, graph, feeds):
        t0 = time.perf_counter()
        out = self.inner.run(graph, feeds)
        self.calls.append((graph.component, time.perf_counter() - t0))
        return out


def models_and_source(setting: Setting):
    from varrt.export.checkpoint import load_models, random_models
    from varrt.runtime.artifacts import checkpoint_source
    from varrt.runtime.demo import demo_model

    if setting.model == "demo":
        demo = demo_model()
        sampling = SamplingConfig(**demo.sampling)
        labels = [i % len(demo.classes) for i in range(setting.batch)]
        return load_models(demo.var, demo.vqvae), checkpoint_source(demo.var, demo.vqvae), sampling, labels
    labels = [IMAGENET_LABELS[i % len(IMAGENET_LABELS)] for i in range(setting.batch)]
    return random_models(setting.model), random_source(setting.model, 0), SamplingConfig(), labels


def shape_counts(policies: list[Policy], schedule, batch: int) -> dict:
    """Static transformer shapes the export holds (bucketed group sizes) and would hold with one
    shape per group size 1..B; the most shapes one (scale, budget, CFG mode) has in each."""
    cap = kv_capacity([p for pol in policies for p in pol.plans], schedule)
    out = {}
    for label, sizes in (("bucketed", group_sizes(batch)), ("every size", range(1, batch + 1))):
        shapes, per = set(), defaultdict(set)
        for pol in policies:
            shapes.update(step_shapes(pol.plans, schedule, batch, pol.split_from, cap, sizes=sizes))
            for plan in pol.plans:
                for si in plan.run_scales():
                    for b in sizes if pol.split_from is not None and si >= pol.split_from else (batch,):
                        s = plan.step_shape(si, schedule, b, cap)
                        per[si, s.tokens, s.rows // b].add(s.rows)
        out[label] = {"transformer_shapes": len(shapes), "max_per_scale_budget_cfg": max(len(v) for v in per.values())}
    return out


def padding_waste(policy: Policy, cfg, results: list[Generation]) -> float:
    """FLOPs the padding rows of split groups add, as a fraction of the real samples' FLOPs."""
    per_sample = {p.name: [f.total for f in plan_flops(cfg, p)] for p in policy.plans}
    pad = real = 0.0
    for r in results:
        for si, groups in enumerate(r.groups):
            for plan, samples, width in groups:
                real += samples * per_sample[plan][si]
                pad += (width - samples) * per_sample[plan][si]
    return pad / real if real else 0.0


def host_overhead(engine: OrtEngine, policy: Policy, labels, sampling) -> dict:
    """One generation with ORT's profiler on: per transformer call, the share of ``engine.run``'s
    wall time outside ORT's kernels (binding, session run set-up, per-node dispatch)."""
    timed = TimedEngine(engine)
    generate(timed, labels, seed=0, sampling=sampling, policy=policy)  # warm-up (first calls of each shape)
    timed.calls.clear()
    generate(timed, labels, seed=0, sampling=sampling, policy=policy)
    files = engine.end_profiling()
    walls = [dt for comp, dt in timed.calls if comp.startswith("transformer")]
    events = json.loads(files["transformer"].read_text()) if "transformer" in files else []
    for f in files.values():
        f.unlink(missing_ok=True)
    runs = [e for e in events if e.get("name") == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    runs = runs[-len(walls) :] if walls else []
    shares, session = [], []
    for wall, run in zip(walls, runs):
        inside = sum(k["dur"] for k in kernels if run["ts"] <= k["ts"] <= run["ts"] + run["dur"]) * 1e-6
        shares.append(1 - inside / wall)
        session.append(1 - inside / (run["dur"] * 1e-6))
    return {
        "calls": len(shares),
        "host_share_per_call": stats(shares) if shares else None,
        "outside_kernels_in_session_run": stats(session) if session else None,
    }


def bench_setting(name: str, setting: Setting, args, say) -> dict:
    (var, vqvae), source, sampling, labels = models_and_source(setting)
    policies = [make_policy(p, var.cfg) for p in args.policies]
    say(f"{name}: export (reused when cached)")
    request = ExportRequest(source, tuple(args.policies), setting.batch, ExportConfig())
    artifact = ensure_artifact(request, lambda: (var, vqvae), say=say)
    engines = {"torch": TimedEngine(TorchEngine(var, vqvae)), "ort": TimedEngine(OrtEngine(artifact))}
    cap = engines["ort"].kv_capacity
    runs: dict = {(b, p.name): defaultdict(list) for b in engines for p in policies}
    order = list(engines)
    for rep in range(args.warmup + args.repeat):
        timed = rep >= args.warmup
        for policy in policies:
            for backend in order if rep % 2 == 0 else order[::-1]:
                engine = engines[backend]
                engine.calls.clear()
                t0 = time.perf_counter()
                res = generate(engine, labels, seed=0, sampling=sampling, policy=policy, capacity=cap)
                wall = time.perf_counter() - t0
                if not timed:
                    continue
                r = runs[backend, policy.name]
                engine_s = defaultdict(float)
                for comp, dt in engine.calls:
                    engine_s["transformer" if comp.startswith("transformer") else comp] += dt
                r["total"].append(wall)
                r["scales"].append(res.scale_seconds)
                r["decode"].append(res.seconds["decode"])
                r["sampling"].append(res.seconds["sampling"])
                r["engine_transformer"].append(engine_s["transformer"])
                r["engine_decoder"].append(engine_s["decoder"])
                # the scales' time less their engine calls (the decoder runs after the scales)
                r["runtime"].append(sum(res.scale_seconds) - engine_s["transformer"])
                r["calls"].append(sum(1 for comp, _ in engine.calls if comp.startswith("transformer")))
                r["flops"].append(sample_flops(engine, policy, res))
                r["generations"].append(res)
                r["load"].append(os.getloadavg()[0])
        say(f"{name}: {'warm-up' if not timed else 'repeat'} {rep + 1} of {args.warmup + args.repeat} done")
    profiled = {}
    if not args.no_profile:
        with tempfile.TemporaryDirectory() as tmp:
            for policy in policies:
                say(f"{name}: profiling {policy.name} on ORT")
                prof = OrtEngine(artifact, profile=Path(tmp) / "ort")
                profiled[policy.name] = host_overhead(prof, policy, labels, sampling)
    return summarize(
        name,
        setting,
        var.cfg,
        policies,
        runs,
        profiled,
        shape_counts(policies, var.cfg.schedule, setting.batch),
        artifact,
    )


def paired(a: list[float], b: list[float]) -> dict:
    return stats([x / y for x, y in zip(a, b)])


#: the parts of a generation's time each row breaks down (ms)
BREAKDOWN = ("engine_transformer", "engine_decoder", "runtime", "sampling")


def summarize(name, setting, cfg, policies, runs, profiled, shapes, artifact) -> dict:
    from varrt.export.artifact import read_manifest

    full = {b: runs[b, "full"] for b in ("torch", "ort")}
    rows = []
    for policy in policies:
        t, o = runs["torch", policy.name], runs["ort", policy.name]
        f = float(np.mean(o["flops"])) / float(np.mean(full["ort"]["flops"]))
        t_full, d_full = float(np.median(full["ort"]["total"])), float(np.median(full["ort"]["decode"]))
        ideal = t_full / (f * (t_full - d_full) + d_full)
        # the same bound with the sampler's work counted as fixed too (no token budget reduces it)
        fixed = d_full + float(np.median(full["ort"]["sampling"]))
        ideal_fixed = t_full / (f * (t_full - fixed) + fixed)
        speedup = paired(full["ort"]["total"], o["total"])
        rows.append(
            {
                "policy": policy.name,
                "torch_s": stats(t["total"]),
                "ort_s": stats(o["total"]),
                "torch_over_ort": paired(t["total"], o["total"]),
                "speedup_torch": paired(full["torch"]["total"], t["total"]),
                "speedup_ort": speedup,
                "flops_vs_full": f,
                "ideal_speedup_ort": ideal,
                "achieved_over_ideal": speedup["median"] / ideal,
                "ideal_speedup_ort_sampler_fixed": ideal_fixed,
                "achieved_over_ideal_sampler_fixed": speedup["median"] / ideal_fixed,
                "ort_breakdown_ms": {k: stats(np.array(o[k]) * 1e3) for k in BREAKDOWN},
                "torch_breakdown_ms": {k: stats(np.array(t[k]) * 1e3) for k in BREAKDOWN},
                "transformer_calls": int(np.median(o["calls"])),
                "padding_flops": padding_waste(policy, cfg, o["generations"]),
                "host_overhead": profiled.get(policy.name),
                "scale_ms": {
                    b: [
                        stats(np.array(runs[b, policy.name]["scales"])[:, si] * 1e3)
                        for si in range(cfg.schedule.num_scales)
                    ]
                    for b in ("torch", "ort")
                },
                "decode_ms": {b: stats(np.array(runs[b, policy.name]["decode"]) * 1e3) for b in ("torch", "ort")},
                "load_1min": stats(t["load"] + o["load"]),
            }
        )
    manifest = read_manifest(artifact)
    return {
        "setting": name,
        "model": {"name": cfg.label, "depth": cfg.depth, "width": cfg.width, "schedule": list(cfg.patch_nums)},
        "weights": setting.weights,
        "batch": setting.batch,
        "export": {
            "static_graphs": len(manifest.graphs),
            "transformer_shapes": {k: v["transformer_shapes"] for k, v in shapes.items()},
            "max_shapes_per_scale_budget_cfg": {k: v["max_per_scale_budget_cfg"] for k, v in shapes.items()},
            "group_sizes": list(group_sizes(setting.batch)),
        },
        "policies": rows,
    }


def fmt(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    return f"{s['median'] * scale:.{digits}f} ({s['p10'] * scale:.{digits}f}-{s['p90'] * scale:.{digits}f})"


def markdown(report: dict) -> str:
    lines = [
        "# Every policy on eager torch and ONNX Runtime",
        "",
        *provenance_lines(report),
        "- load (1 min average) during the runs: see each table",
        f"- warm-up {report['warmup']}, repeats {report['repeat']}; medians (p10-p90); ratios per repeat, the two "
        "backends back to back (order alternating)",
        "- ideal = T_full / (f (T_full - T_decode) + T_decode) on ORT, f = transformer FLOPs vs full; host share = "
        "the part of a transformer call's `engine.run` wall time outside ORT's kernels (profiled generation); "
        "runtime = the scales' time outside the transformer's engine calls, of which the sampler (CFG mix, top-k / "
        "top-p, draw, the f_hat update and the next input: per-token work no budget reduces); 'ideal, sampler "
        "fixed' counts the full plan's sampler time as fixed, like the decoder's",
        "",
    ]
    for s in report["settings"]:
        ex = s["export"]
        loads = [p["load_1min"]["median"] for p in s["policies"]]
        lines += [
            f"## {s['setting']}: {s['model']['name']} (depth {s['model']['depth']}, width {s['model']['width']}), "
            f"batch {s['batch']} with CFG — weights: **{s['weights']}**",
            "",
            f"Load (1 min average) during the runs: {min(loads):.1f}-{max(loads):.1f}. Export: {ex['static_graphs']} "
            f"static graphs; transformer shapes {ex['transformer_shapes']['bucketed']} with bucketed group sizes "
            f"{ex['group_sizes']} ({ex['transformer_shapes']['every size']} with one per size 1..{s['batch']}); "
            "at most "
            f"{ex['max_shapes_per_scale_budget_cfg']['bucketed']} per (scale, budget, CFG mode) "
            f"({ex['max_shapes_per_scale_budget_cfg']['every size']} without bucketing).",
            "",
            "| policy | torch s | ORT s | torch / ORT | speed-up torch | speed-up ORT | FLOPs vs full | ideal ORT "
            "| achieved / ideal | ideal, sampler fixed | achieved / that | ORT transformer ms | ORT runtime ms "
            "| of which sampler ms | ORT decode ms | host share / call | padding FLOPs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in s["policies"]:
            b, h = p["ort_breakdown_ms"], p["host_overhead"]
            share = fmt(h["host_share_per_call"], 100, 0) + " %" if h and h["host_share_per_call"] else "n/a"
            lines.append(
                f"| {p['policy']} | {fmt(p['torch_s'])} | {fmt(p['ort_s'])} | {fmt(p['torch_over_ort'], digits=2)} | "
                f"{p['speedup_torch']['median']:.2f}x | {fmt(p['speedup_ort'], digits=2)} | {p['flops_vs_full']:.2f} | "
                f"{p['ideal_speedup_ort']:.2f}x | {p['achieved_over_ideal']:.2f} | "
                f"{p['ideal_speedup_ort_sampler_fixed']:.2f}x | {p['achieved_over_ideal_sampler_fixed']:.2f} | "
                f"{b['engine_transformer']['median']:.0f} | {b['runtime']['median']:.0f} | "
                f"{b['sampling']['median']:.0f} | "
                f"{b['engine_decoder']['median']:.0f} | {share} | {100 * p['padding_flops']:.1f} % |"
            )
        lines += [
            "",
            "Per-scale medians on ORT (ms):",
            "",
            *per_scale_table(
                ("policy",), [((p["policy"],), p["scale_ms"]["ort"], p["decode_ms"]["ort"]) for p in s["policies"]]
            ),
        ]
        lines.append("")
    return "\n".join(lines)


def plot_setting(s: dict, stem: Path) -> list[Path]:
    """The per-scale stacked bars of runtime/bench.py, for one setting's runs."""
    results = [
        {"backend": b, "policy": p["policy"], "scale_ms": p["scale_ms"][b], "decode_ms": p["decode_ms"][b]}
        for b in ("torch", "ort")
        for p in s["policies"]
    ]
    report = {"model": {**s["model"], "name": f"{s['setting']}"}, "batch": s["batch"], "results": results}
    return plots({**report, "fidelity": {}}, stem)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policy specs (full is added)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled ORT generation (host share)")
    p.add_argument("--name", default="backends")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or args.repeat < 1 or args.warmup < 0:
        print(f"unknown settings {unknown} (known: {', '.join(SETTINGS)}), or --repeat < 1 / --warmup < 0")
        return 2
    args.policies = ["full", *[s for s in args.policies.split(",") if s and s != "full"]]
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    settings = [bench_setting(n, SETTINGS[n], args, say) for n in names]
    report = {**provenance(args.warmup, args.repeat), "settings": settings}
    stem = args.out_dir / args.name
    paths = write_results(stem, {".json": json.dumps(report, indent=1, default=str), ".md": markdown(report)})
    for s in settings:
        paths += plot_setting(s, args.out_dir / f"{args.name}-{s['setting']}")
    print(markdown(report))
    say("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
