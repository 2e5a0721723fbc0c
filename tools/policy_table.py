"""The committed policy table: ``python tools/policy_table.py`` (every policy, demo model and var-d16 size).

Two ``varrt bench`` runs (runtime/bench.py: every repeat runs each backend x policy once, interleaved,
so the speed-ups against ``full`` on the same backend are taken side by side in one run):

* the bundled demo model (trained weights), one image per class, torch and ONNX Runtime, with SSIM
  and PSNR against ``full`` over ``--fidelity-seeds`` seeds;
* var-d16 with random weights, batch 1, torch and ONNX Runtime, no fidelity (random weights say
  nothing about it: the var-d16 rows are FLOPs and speed only).

Policies: each at its defaults and a composition, on both models; on the demo model also SkipVAR with
the selector refit on it (``skipvar:model=demo``) and the Pareto
points of the LD-Pruning / StepVAR knob sweep (``tools/sweep_policies.py``; its JSON is read; they are
the demo model's trade-offs, so var-d16 runs the defaults only, which keeps its CPU run within hours).
Writes both bench reports (JSON, markdown, plots) and one combined JSON + markdown table into
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varrt.runtime.bench import provenance, provenance_lines, write_results
from varrt.runtime.cli import main as varrt

POLICIES = ("full", "fastvar", "skipvar", "ld-pruning", "stepvar", "toprovar", "stagevar", "skipvar+stepvar")
#: the demo model's own SkipVAR selector (tools/fit_skipvar.py), beside the published Infinity-2B one
DEMO_ONLY = ("skipvar:model=demo",)
SWEEP = Path("benchmarks/results/demo-sweep-ldpruning-stepvar.json")


def sweep_points(path: Path) -> dict[str, dict]:
    """The sweep's Pareto points by spec (with its SSIM / FLOPs figures), or none without a sweep."""
    if not path.exists():
        return {}
    sweep = json.loads(path.read_text())
    return {p["spec"]: {**p, "policy": policy} for policy, front in sweep["pareto"].items() for p in front}


def bench(argv: list[str], out_dir: Path, name: str) -> dict:
    code = varrt(["bench", *argv, "--out-dir", str(out_dir), "--name", name])
    if code != 0:
        raise SystemExit(f"varrt bench {name} failed ({code})")
    return json.loads((out_dir / f"{name}.json").read_text())


def rows(report: dict) -> dict[str, dict]:
    """Per policy: FLOPs ratio and end-to-end / transformer speed-ups per backend, fidelity if any."""
    out: dict[str, dict] = {}
    for r in report["results"]:
        row = out.setdefault(
            r["policy"], {"flops_ratio": r["flops_ratio_vs_full"], "gflops": r["flops_per_image"] / 1e9}
        )
        row[r["backend"]] = {
            "speedup": r["speedup_vs_full"],
            "transformer_speedup": r["transformer_speedup_vs_full"],
            "seconds": r["seconds"]["median"],
            "seconds_p10_p90": [r["seconds"]["p10"], r["seconds"]["p90"]],
        }
    for name, f in report.get("fidelity", {}).items():
        if name in out:
            out[name].update(ssim=f["ssim"]["mean"], ssim_worst5=f["ssim"]["worst5"], psnr=f["psnr"]["mean"])
    return out


#: FLOPs ratios within this of each other count as matched (the grid's budgets are 0.1 keep apart)
MATCHED_FLOPS = 0.05


def matched_flops(table_rows: dict[str, dict], window: float = MATCHED_FLOPS) -> list[dict]:
    """Groups of policies at matched cost: sorted by FLOPs ratio, a group grows while its FLOPs span
    stays within ``window``; per group of two or more with SSIM, the best and the worst policy and
    the spread of their mean SSIM. This is the figure that says whether the demo model's fidelity
    separates a faithful policy from a careless one at the same cost."""
    ranked = sorted(
        ((r["flops_ratio"], name, r["ssim"]) for name, r in table_rows.items() if "ssim" in r and name != "full"),
    )
    groups: list[list[tuple]] = []
    for entry in ranked:
        if groups and entry[0] - groups[-1][0][0] <= window:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    out = []
    for g in groups:
        if len(g) < 2:
            continue
        best, worst = max(g, key=lambda e: e[2]), min(g, key=lambda e: e[2])
        out.append(
            {
                "flops": [g[0][0], g[-1][0]],
                "policies": [e[1] for e in g],
                "best": best[1],
                "best_ssim": best[2],
                "worst": worst[1],
                "worst_ssim": worst[2],
                "spread": best[2] - worst[2],
            }
        )
    return out


def matched_lines(groups: list[dict]) -> list[str]:
    if not groups:
        return [f"No two policies within {MATCHED_FLOPS} of each other in FLOPs: no matched-cost comparison.", ""]
    lines = [
        f"### At matched FLOPs (ratios within {MATCHED_FLOPS} of each other)",
        "",
        "| FLOPs vs full | policies | best (SSIM) | worst (SSIM) | spread |",
        "|---|---|---|---|---|",
    ]
    for g in groups:
        lines.append(
            f"| {g['flops'][0]:.3f}-{g['flops'][1]:.3f} | {', '.join(f'`{p}`' for p in g['policies'])} | "
            f"`{g['best']}` ({g['best_ssim']:.4f}) | `{g['worst']}` ({g['worst_ssim']:.4f}) | {g['spread']:.4f} |"
        )
    return [*lines, ""]


def header(report: dict) -> list[str]:
    model = report["model"]
    return [
        f"- {model['name']} (depth {model['depth']}, width {model['width']}, schedule {model['schedule']}); "
        f"weights: **{model['weights']}**; batch {report['batch']} with CFG; warm-up {report['warmup']}, "
        f"repeats {report['repeat']} (medians); sampling {report['sampling']}",
        *provenance_lines(report),
    ]


def table(name: str, report: dict, table_rows: dict[str, dict], points: dict[str, dict], fidelity: bool) -> list[str]:
    cols = "| policy | FLOPs vs full | end-to-end torch | end-to-end ORT | transformer torch | transformer ORT |"
    lines = [f"## {name}", "", *header(report), "", cols + (" SSIM | SSIM worst 5% | PSNR dB |" if fidelity else "")]
    lines.append("|---" * (6 + 3 * fidelity) + "|")
    for policy, r in table_rows.items():
        t, o = r.get("torch", {}), r.get("ort", {})
        label = f"`{policy}`" + (" (sweep Pareto)" if policy in points else "")
        cells = [
            label,
            f"{r['flops_ratio']:.3f}",
            *(f"{b['speedup']:.2f}x" if b else "-" for b in (t, o)),
            *(f"{b['transformer_speedup']:.2f}x" if b else "-" for b in (t, o)),
        ]
        if fidelity:
            cells += [f"{r['ssim']:.4f}", f"{r['ssim_worst5']:.4f}", f"{r['psnr']:.2f}"] if "ssim" in r else ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(combined: dict) -> str:
    lines = [
        "# Every policy: FLOPs, speed-up and fidelity against full",
        "",
        f"`{combined['command']}` (commit `{combined['commit']}`, {combined['date']}). Speed-ups are against "
        "`full` on the same backend in the same run (end-to-end, and the transformer's share alone); SSIM / "
        "PSNR against `full` with the same seeds and classes, demo model only (var-d16 has random weights). "
        "The machine is a shared CPU VM: compare figures within a table.",
        "",
        *table(
            "Demo model (trained weights)",
            combined["demo"]["report"],
            combined["demo"]["rows"],
            combined["sweep_points"],
            True,
        ),
        *matched_lines(matched_flops(combined["demo"]["rows"])),
    ]
    if combined.get("var-d16"):
        lines += table(
            "var-d16 size (random weights)",
            combined["var-d16"]["report"],
            combined["var-d16"]["rows"],
            combined["sweep_points"],
            False,
        )
    else:
        lines += ["var-d16 size: not run in this table (`--no-d16`).", ""]
    if combined["sweep_points"]:
        lines += [
            "## Pareto points of the LD-Pruning / StepVAR sweep (demo model, tools/sweep_policies.py)",
            "",
            "| point | SSIM (sweep) | FLOPs speed-up (sweep) | measured speed-up (sweep, torch) |",
            "|---|---|---|---|",
        ]
        for spec, p in combined["sweep_points"].items():
            lines.append(f"| `{spec}` | {p['ssim']:.4f} | {p['flops_speedup']:.2f}x | {p['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed repeats on the demo model (default 3)")
    p.add_argument("--d16-repeat", type=int, default=1, help="timed repeats at var-d16 size (default 1)")
    p.add_argument("--fidelity-seeds", type=int, default=4, help="seeds for SSIM / PSNR on the demo model")
    p.add_argument("--sweep", type=Path, default=SWEEP, help="the sweep's JSON (its Pareto points are added)")
    p.add_argument("--name", default="policy-table")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--no-d16", action="store_true", help="the demo model only (var-d16 takes hours on a CPU)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.d16_repeat < 1 or args.fidelity_seeds < 1:
        print("--repeat, --d16-repeat and --fidelity-seeds must be >= 1", file=sys.stderr)
        return 2
    points = sweep_points(args.sweep)
    as_args = lambda specs: [a for s in specs for a in ("--policy", s)]  # noqa: E731
    common = ["--backends", "torch,ort", "--warmup", str(args.warmup)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    from varrt.runtime.demo import demo_model

    classes = len(demo_model().classes)
    demo_specs = [*POLICIES, *DEMO_ONLY, *(s for s in points if s not in POLICIES)]
    demo = bench(
        [*common, *as_args(demo_specs), "--batch", str(classes), "--repeat", str(args.repeat),
         "--fidelity-seeds", str(args.fidelity_seeds)],
        args.out_dir,
        f"{args.name}-demo",
    )  # fmt: skip
    d16 = None
    if not args.no_d16:
        d16 = bench(
            ["--random-weights", "--model", "var-d16", *common, *as_args(POLICIES), "--batch", "1",
             "--repeat", str(args.d16_repeat), "--fidelity-seeds", "0"],
            args.out_dir,
            f"{args.name}-var-d16",
        )  # fmt: skip
    combined = {
        **provenance(args.warmup, args.repeat),
        "demo": {"report": demo, "rows": rows(demo)},
        "var-d16": {"report": d16, "rows": rows(d16)} if d16 else None,
        "sweep": str(args.sweep) if points else None,
        "sweep_points": points,
    }
    combined["demo"]["matched_flops"] = matched_flops(combined["demo"]["rows"])
    paths = write_results(
        args.out_dir / args.name, {".json": json.dumps(combined, indent=1), ".md": markdown(combined)}
    )
    print(markdown(combined))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
