"""Sweep LD-Pruning's and StepVAR's knobs on the demo model: ``python tools/sweep_policies.py --seeds 4``.

Neither paper published its settings (docs/policies.md), so varrt's defaults come from this sweep.
Every configuration runs with ``varrt eval``'s loop (runtime/evaluate.py: the full plan and every
configuration on the same seeds and classes, interleaved seed by seed, eager torch): mean and
worst-5% SSIM / PSNR against full, the transformer-FLOPs ratio of the plans the samples ran, and the
measured end-to-end speed-up. The grid:

* budgets, both policies: the last three or the last two scales pruned, each keeping one fraction
  in {0.4, 0.5, 0.6, 0.7} (``keep=0.5/0.5/0.5`` ...; the other knobs at their defaults);
* criteria, at the budget keep = 0.5/0.5 — LD-Pruning: threshold 0 (CFG never stops),
  0.05 and 0.2, measure l1, branch js, restore nearest; StepVAR: alpha 0 (structure only) and 1
  (texture only), the Laplacian filter, 4 PCA components.

Stage 2 runs every criterion setting on a policy's stage-1 front at every budget on that front.
FastVAR runs beside them as the fidelity bar. Per policy: the Pareto front of speed (the FLOPs
speed-up, 1 / FLOPs ratio: deterministic, where the measured speed-up on a shared CPU is noisy)
against mean SSIM, and the proposed default: among the configurations that keep every component the
paper states (not LD-Pruning's threshold 0, not StepVAR's alpha 0 or 1: those are ablations, shown
but never chosen), the Pareto front's fastest point whose mean SSIM is at least FastVAR's (or the
front's best SSIM if none reaches it). JSON + markdown go to benchmarks/results/ (machine,
versions, commit, seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from varrt.engines.torch_engine import TorchEngine
from varrt.export.checkpoint import load_models
from varrt.runtime.bench import provenance, provenance_lines, write_results
from varrt.runtime.demo import demo_model
from varrt.runtime.evaluate import evaluate
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.policies import parse_spec
from varrt.runtime.sampling import SamplingConfig

POLICIES = ("ld-pruning", "stepvar")


def grid() -> dict[str, list[str]]:
    """The swept specs per policy (knobs not named keep their defaults). Budgets name the last two or
    three scales by their count of keep fractions, so a spec means the same on any schedule."""
    budgets = ["keep=" + "/".join([str(keep)] * count) for count in (3, 2) for keep in (0.4, 0.5, 0.6, 0.7)]
    ref = "keep=0.5/0.5"
    ld = ["threshold=0", "threshold=0.05", "threshold=0.2", "measure=l1", "branch=js", "restore=nearest"]
    step = ["alpha=0", "alpha=1", "filter=laplacian", "components=4"]
    return {
        "ld-pruning": [f"ld-pruning:{b}" for b in budgets] + [f"ld-pruning:{ref},{c}" for c in ld],
        "stepvar": [f"stepvar:{b}" for b in budgets] + [f"stepvar:{ref},{c}" for c in step],
    }


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on both FLOPs speed-up and mean SSIM, fastest first."""
    front = [
        p
        for p in points
        if not any(
            q["flops_speedup"] >= p["flops_speedup"]
            and q["ssim"] >= p["ssim"]
            and (q["flops_speedup"] > p["flops_speedup"] or q["ssim"] > p["ssim"])
            for q in points
        )
    ]
    return sorted(front, key=lambda p: -p["flops_speedup"])


def ablation(spec: str) -> bool:
    """Whether a spec switches off a component the paper states (LD-Pruning's CFG stop: threshold 0;
    StepVAR's dual criterion: alpha 0 or 1). Ablations are measured and shown, never chosen."""
    opts = parse_spec(spec)[1]
    return opts.get("threshold") == "0" or opts.get("alpha") in ("0", "1")


def choose(front: list[dict], bar: float) -> dict:
    """The fastest front point with mean SSIM >= ``bar`` (or the front's best SSIM if none reaches it)."""
    good = [p for p in front if p["ssim"] >= bar]
    return good[0] if good else max(front, key=lambda p: p["ssim"])


def refinements(policy: str, front: list[dict], done: set[str]) -> list[str]:
    """Stage 2: every criterion setting on the stage-1 front at every budget on that front."""
    options = [parse_spec(p["spec"])[1] for p in front]
    budgets = sorted({o["keep"] for o in options})
    criteria = sorted({",".join(f"{k}={v}" for k, v in o.items() if k != "keep") for o in options} - {""})
    specs = [f"{policy}:keep={b},{c}" for b in budgets for c in criteria]
    return [s for s in specs if s not in done]


def measured(pipe: Pipeline, specs: list[str], labels: list[int], seeds: int, sampling, say) -> dict[str, dict]:
    """``varrt eval``'s loop over ``specs`` (full is its reference): per spec, fidelity and speed."""
    report = evaluate(pipe, specs, labels, list(range(seeds)), sampling, progress=say)
    return {
        name: {
            "ssim": r["ssim"]["mean"],
            "ssim_worst5": r["ssim"]["worst5"],
            "psnr": r["psnr"]["mean"],
            "flops_ratio": r["flops_ratio"],
            "flops_speedup": 1 / r["flops_ratio"],
            "speedup": r["speedup"],
            "images": r["ssim"]["n"],
        }
        for name, r in report.items()
    }


def run(seeds: int, say=print) -> dict:
    demo = demo_model()
    var, vqvae = load_models(demo.var, demo.vqvae)
    cfg, pipe = var.cfg, Pipeline(TorchEngine(var, vqvae))
    labels = list(range(len(demo.classes)))
    sampling = SamplingConfig(**demo.sampling)
    specs = grid()
    say("stage 1: budgets and criteria")
    rows = measured(pipe, ["fastvar", *(s for g in specs.values() for s in g)], labels, seeds, sampling, say)
    stage2 = {p: refinements(p, pareto([{"spec": s, **rows[s]} for s in g]), set(g)) for p, g in specs.items()}
    say(f"stage 2: {sum(map(len, stage2.values()))} combinations of the stage-1 fronts")
    more = measured(pipe, [s for g in stage2.values() for s in g], labels, seeds, sampling, say)
    rows.update({k: v for k, v in more.items() if k != "full"})
    bar = rows["fastvar"]["ssim"]
    fronts, chosen = {}, {}
    for policy in specs:
        points = [{"spec": s, **rows[s]} for s in (*specs[policy], *stage2[policy])]
        fronts[policy] = pareto(points)
        chosen[policy] = choose(pareto([p for p in points if not ablation(p["spec"])]), bar)["spec"]
        specs[policy] = [*specs[policy], *stage2[policy]]
    return {
        **provenance(0, seeds),
        "model": {"name": cfg.label, "depth": cfg.depth, "width": cfg.width, "schedule": list(cfg.patch_nums)},
        "weights": f"the bundled demo model ({len(demo.classes)} classes, trained)",
        "backend": "torch",
        "labels": labels,
        "seeds": list(range(seeds)),
        "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p},
        "grid": specs,
        "stage2": stage2,
        "results": rows,
        "fidelity_bar": {"policy": "fastvar", "ssim": bar},
        "pareto": fronts,
        "chosen": chosen,
    }


def markdown(report: dict) -> str:
    model = report["model"]
    lines = [
        f"# LD-Pruning and StepVAR knob sweep — {model['name']} ({report['weights']})",
        "",
        *provenance_lines(report),
        f"- model: depth {model['depth']}, width {model['width']}, schedule {model['schedule']}; backend "
        f"{report['backend']}; {len(report['seeds'])} seeds x {len(report['labels'])} classes per configuration "
        f"(seeds {report['seeds'][0]}..{report['seeds'][-1]}), sampling {report['sampling']}",
        "- SSIM / PSNR against `full` (same seeds and classes); FLOPs speed-up = 1 / transformer-FLOPs ratio; "
        "measured = end-to-end median over the seeds (interleaved, noisy on a shared CPU)",
        f"- fidelity bar: FastVAR's mean SSIM {report['fidelity_bar']['ssim']:.4f}; the chosen default is the "
        "fastest Pareto point (FLOPs speed-up vs mean SSIM) at or above it among the non-ablations (or the best "
        "SSIM on that front if none reaches it); *ablation*: a stated component switched off; *stage 2*: a "
        "combination of the stage-1 front's criteria and budgets",
        "",
    ]
    for policy, specs in report["grid"].items():
        front = {p["spec"] for p in report["pareto"][policy]}
        lines += [
            f"## {policy}",
            "",
            "| configuration | SSIM mean | SSIM worst 5% | PSNR dB | FLOPs vs full | FLOPs speed-up "
            "| measured speed-up | Pareto |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in sorted(specs, key=lambda s: report["results"][s]["flops_ratio"]):
            r = report["results"][s]
            mark = "**chosen**" if s == report["chosen"][policy] else ("front" if s in front else "")
            tags = [t for t, on in (("ablation", ablation(s)), ("stage 2", s in report["stage2"][policy])) if on]
            label = f"`{s}`" + (f" *{', '.join(tags)}*" if tags else "")
            lines.append(
                f"| {label} | {r['ssim']:.4f} | {r['ssim_worst5']:.4f} | {r['psnr']:.2f} | {r['flops_ratio']:.3f} | "
                f"{r['flops_speedup']:.2f}x | {r['speedup']:.2f}x | {mark} |"
            )
        lines.append("")
    r = report["results"]["fastvar"]
    lines.append(
        f"FastVAR (bar): SSIM {r['ssim']:.4f}, PSNR {r['psnr']:.2f} dB, FLOPs {r['flops_ratio']:.3f}, "
        f"measured {r['speedup']:.2f}x."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=4, help="seeds per class and configuration (default 4)")
    p.add_argument("--name", default="demo-sweep-ldpruning-stepvar")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        print("--seeds must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.seeds, say=lambda m: print(m, flush=True))
    paths = write_results(args.out_dir / args.name, {".json": json.dumps(report, indent=1), ".md": markdown(report)})
    print(markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
