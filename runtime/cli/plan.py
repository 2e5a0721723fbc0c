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

    if args.model in INFINITY_CONFIGS:
        cfg = INFINITY_CONFIGS[args.model]
        sched = InfinitySchedule.for_ratio(args.h_div_w, args.pn)
        h, w = sched.grids[-1]
        target, label = PolicyTarget(sched, cfg.depth, "infinity"), f"{args.model} ({h}x{w}, {args.text} text tokens)"
    else:
        cfg = var_config(args.model)
        sched, target, label = cfg.schedule, PolicyTarget.of(cfg), cfg.label
    policy = make_policy(args.name, target)
    flops_of = lambda plan: plan_flops(cfg, plan, 1, sched, args.text)  # noqa: E731
    full = sum(f.total for f in flops_of(make_policy("full", target).plans[0]))
    once = conditioner_flops(cfg, 1, args.text)
    for plan in policy.plans:
        flops = flops_of(plan)
        total = sum(f.total for f in flops)
        rows = []
        for si, (sp, f) in enumerate(zip(plan.scales, flops)):
            h, w = sched.grids[si]
            budget = "-" if not sp.run else f"{plan.tokens(si, sched)}/{h * w}"
            rows.append(
                [
                    f"{si}",
                    f"{h}x{w}",
                    "yes" if sp.run else "skip",
                    budget,
                    sp.cfg if sp.run else "-",
                    sp.restore,
                    f"{f.total / 1e9:.2f}",
                    f"{100 * f.total / full:.1f}%",
                ]
            )
        extra = f", blocks [{plan.fastvar_blocks[0]}, {plan.fastvar_blocks[1]})" if plan.fastvar_blocks else ""
        con.console.print(
            con.table(
                f"{plan.name} on {label}{extra}: {total / 1e9:.1f} GFLOPs per image with CFG "
                f"({100 * total / full:.1f}% of full; conditioner {once / 1e9:.2f} once)",
                ["scale", "grid", "run", "budget", "CFG", "restore", "GFLOPs", "of full"],
                rows,
            )
        )
        if plan.description:
            con.info(plan.description)
    return 0


def add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="inspect plans and policies")
    psub = p.add_subparsers(dest="plan_command", required=True)
    show = psub.add_parser("show", help="the per-scale table of a policy's plans (budget, CFG, run, FLOPs)")
    show.add_argument("name", help="full, fastvar[:...], skipvar[:...] or a plan file")
    show.add_argument("--model", default="var-d16", help="architecture whose schedule and FLOPs to use")
    show.add_argument("--h-div-w", type=float, default=1.0, help="Infinity: aspect ratio h/w (nearest template)")
    show.add_argument("--pn", default="1M", help="Infinity: schedule size (0.06M, 0.25M, 0.60M, 1M)")
    show.add_argument("--text", type=int, default=64, help="Infinity: prompt tokens (T5 bucket) for the FLOPs")
    show.set_defaults(func=cmd_plan_show)
