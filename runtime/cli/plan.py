"""``varrt plan show``: a policy's per-scale plan and FLOPs."""

from __future__ import annotations

import argparse

from varrt.runtime import console as con


# ------------------------------------------------------------------------------------------ plan show
def cmd_plan_show(args: argparse.Namespace) -> int:
    from varrt.export.configs import var_config
    from varrt.export.infinity_config import INFINITY_CONFIGS, InfinitySchedule
    from varrt.runtime.flops import conditioner_flops, plan_flops
    from varrt.runtime.policies import PolicyTarget, make_policy
    from varrt.runtime.weights import Weights

    if args.text < 1:
        raise ValueError(f"--text must be >= 1 (prompt tokens), got {args.text}")
    if args.model in INFINITY_CONFIGS:
        cfg = INFINITY_CONFIGS[args.model]
        sched = InfinitySchedule.for_ratio(args.h_div_w, args.pn)
        h, w = sched.grids[-1]
        target, label = PolicyTarget(sched, cfg.depth, "infinity"), f"{args.model} ({h}x{w}, {args.text} text tokens)"
    else:
        cfg = Weights.demo_model().known_config() if args.model == "demo" else var_config(args.model)
        sched, target, label = cfg.schedule, PolicyTarget.of(cfg), cfg.label
    policy = make_policy(args.name, target)
    flops_of = lambda plan: plan_flops(cfg, plan, 1, sched, args.text)  # noqa: E731
    full = sum(f.total for f in flops_of(make_policy("full", target).plans[0]))
    once = conditioner_flops(cfg, 1, args.text)
    plans = []
    for plan in policy.plans:
        flops = flops_of(plan)
        total = sum(f.total for f in flops)
        scales = [
            {
                "scale": si,
                "grid": list(sched.grids[si]),
                "run": sp.run,
                "tokens": plan.tokens(si, sched) if sp.run else 0,
                "block_tokens": list(sp.block_tokens) if sp.run and sp.block_tokens is not None else None,
                "of_tokens": sched.tokens(si),
                "cfg": sp.cfg,  # a scale that does not run keeps its branch's place in the plan
                "restore": sp.restore,
                "layers": list(sp.layers) if sp.layers is not None else None,
                "ranks": list(sp.ranks) if sp.ranks is not None else None,
                "gflops": f.total / 1e9,
            }
            for si, (sp, f) in enumerate(zip(plan.scales, flops))
        ]
        plans.append(
            {
                "plan": plan.name,
                "description": plan.description,
                "fastvar_blocks": list(plan.fastvar_blocks) if plan.fastvar_blocks else None,
                "toprovar_block": plan.toprovar_block,
                "lowrank_chunk": plan.lowrank_chunk,
                "gflops_per_image": total / 1e9,
                "share_of_full": total / full,
                "scales": scales,
            }
        )
    if args.json:
        con.print_json({"model": label, "policy": policy.name, "conditioner_gflops": once / 1e9, "plans": plans})
        return 0
    for p in plans:
        rows = [
            [
                f"{s['scale']}",
                "x".join(map(str, s["grid"])),
                "yes" if s["run"] else "skip",
                _budget(s, p["toprovar_block"]),
                s["cfg"] if s["run"] else f"({s['cfg']})",
                s["restore"],
                f"{s['gflops']:.2f}",
                f"{100 * s['gflops'] * 1e9 / full:.1f}%",
            ]
            for s in p["scales"]
        ]
        blocks = p["fastvar_blocks"]
        extra = f", blocks [{blocks[0]}, {blocks[1]})" if blocks else ""
        extra += f", low-rank chunks of {p['lowrank_chunk']} blocks" if p["lowrank_chunk"] else ""
        con.result(
            con.table(
                f"{p['plan']} on {label}{extra}: {p['gflops_per_image']:.1f} GFLOPs per image with CFG "
                f"({100 * p['share_of_full']:.1f}% of full; conditioner {once / 1e9:.2f} once)",
                ["scale", "grid", "run", "budget", "CFG", "restore", "GFLOPs", "of full"],
                rows,
            )
        )
        if p["description"]:
            con.result(p["description"])
    return 0


def add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="inspect plans and policies")
    psub = p.add_subparsers(dest="plan_command", required=True)
    show = psub.add_parser("show", help="the per-scale table of a policy's plans (budget, CFG, run, FLOPs)")
    show.add_argument("name", help="full, fastvar[:...], skipvar[:...] or a plan file")
    show.add_argument(
        "--model",
        default="demo",
        help="architecture whose schedule and FLOPs to use: demo (the bundled demo model, default), "
        "var-d16 ... var-d36, infinity-2b, infinity-8b",
    )
    show.add_argument("--json", action="store_true", help="print the plans as JSON (stdout) instead of tables")
    show.add_argument("--h-div-w", type=float, default=1.0, help="Infinity: aspect ratio h/w (nearest template)")
    show.add_argument("--pn", default="1M", help="Infinity: schedule size (0.06M, 0.25M, 0.60M, 1M)")
    show.add_argument("--text", type=int, default=64, help="Infinity: prompt tokens (T5 bucket) for the FLOPs")
    show.set_defaults(func=cmd_plan_show)


def _budget(scale: dict, toprovar_block: int | None) -> str:
    """The budget column: tokens of the scale, ToProVAR's per-block counts after its entropy block,
    or a low-rank scale's range of ranks."""
    if not scale["run"]:
        return "-"
    n = scale["of_tokens"]
    if scale["ranks"] is not None:  # StageVAR's low-rank scale: r mixtures per chunk
        return f"r {min(scale['ranks'])}-{max(scale['ranks'])}/{n}"
    if scale["block_tokens"] is None:
        return f"{scale['tokens']}/{n}"
    later = scale["block_tokens"][toprovar_block + 1 :]
    counts = f"{min(later)}-{max(later)}" if min(later) != max(later) else f"{later[0]}"
    return f"{counts}/{n} after block {toprovar_block}"
