"""FastVAR's step against the full step at Infinity-2B size, side by side (torch eager, CPU, random weights).

    python tools/bench_infinity_fastvar.py [--model infinity-2b] [--scales 9] [--repeat 3]

The published Infinity setting (``fastvar`` with its defaults: keep 615/1024 tokens at 32x32 and
800/1600 at 40x40 in blocks 3-27) prunes the large scales, which the first-scales benchmark
(``bench_infinity.py``) does not reach. This times one transformer call at each scale in
``--scales`` three times: the plain graph computing every token, the FastVAR graph of the
published plan, and the same FastVAR call also returning its residual deltas (what a pruned scale
wrote before graph contract 2; only the reference scale's are read), with the KV cache of every
earlier scale, batch 1 with CFG (2 rows) and ``--text`` prompt tokens. The calls alternate within
each repeat, so drift hits all; ratios are taken per repeat. Inputs are
:func:`varrt.engines.compare.random_feeds` (cost does not depend on values).
Results go to ``benchmarks/results/<model>-fastvar-step-s<scales>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch

from varrt.engines.compare import random_feeds
from varrt.export.infinity import Infinity
from varrt.export.infinity_config import INFINITY_CONFIGS, InfinitySchedule
from varrt.export.infinity_graphs import TextStepShape, infinity_graph_module, infinity_step_spec
from varrt.runtime.bench import provenance, stats, write_results
from varrt.runtime.infinity_generate import infinity_step_shape
from varrt.runtime.policies.infinity import make_infinity_policy

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="infinity-2b", choices=sorted(INFINITY_CONFIGS))
    ap.add_argument("--scales", default="9", help="comma-separated scale indices of the 1024 px schedule (9: 32x32)")
    ap.add_argument("--text", type=int, default=64, help="prompt tokens (T5 bucket)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = INFINITY_CONFIGS[args.model]
    sched = InfinitySchedule.for_ratio(1.0, "1M")
    scales = [int(s) for s in args.scales.split(",")]
    policy = make_infinity_policy("fastvar", sched, cfg.depth)
    plan = policy.plans[0]
    cap, lt, batch = sum(sched.tokens(si) for si in range(max(scales) + 1)), args.text, 1

    print(f"building {args.model} with random weights ...", flush=True)
    rows = []
    with torch.inference_mode():
        model = Infinity(cfg).init_weights(0).eval().requires_grad_(False)
        for si in scales:
            fast_shape = infinity_step_shape(plan, si, sched, batch, cap, lt)
            if not plan.scales[si].run or fast_shape.component != "infinity_transformer_fastvar":
                raise SystemExit(f"scale {si} {sched.grids[si]}: the published FastVAR plan does not prune it")
            n = sched.tokens(si)
            graphs = {
                "full": infinity_step_spec(
                    cfg, TextStepShape(fast_shape.rows, n, n, cap, past=fast_shape.past, text=lt)
                ),
                "fastvar": infinity_step_spec(cfg, fast_shape),
                "fastvar+deltas": infinity_step_spec(cfg, replace(fast_shape, returns_deltas=True)),
            }
            modules = {
                k: infinity_graph_module(g.component, model, None, None, g.blocks, g.output_names)
                for k, g in graphs.items()
            }
            feeds = {k: random_feeds(g, sched.total_tokens, 0, seed=si) for k, g in graphs.items()}
            for k in ("fastvar", "fastvar+deltas"):  # one cache for all (1.3 GB at 2B, scale 9): less memory
                feeds[k]["kv"] = feeds["full"]["kv"]
            # the cache holds every earlier scale's tokens, as in a real generation
            earlier = sum(sched.tokens(s) for s in range(si))
            for k, g in graphs.items():
                live = (torch.arange(fast_shape.past) < earlier).float().log()
                feeds[k]["kv_bias"] = live.expand(g.input("kv_bias").shape).contiguous()
            times: dict[str, list[float]] = {k: [] for k in graphs}
            for r in range(args.warmup + args.repeat):
                for k, g in graphs.items():
                    t0 = time.perf_counter()
                    modules[k](*(feeds[k][t.name] for t in g.inputs))
                    dt = time.perf_counter() - t0
                    print(f"scale {si} {k} pass {r}: {dt:.2f} s", flush=True)
                    if r >= args.warmup:
                        times[k].append(dt)
            ratio = lambda a, b, t=times: stats([x / y for x, y in zip(t[a], t[b])])  # noqa: E731
            rows.append({
                "scale": si, "grid": sched.grids[si], "tokens": n, "keep": fast_shape.keep,
                "pruned_blocks": list(fast_shape.blocks), "kv_slots_live": earlier,
                **{k: stats(v) for k, v in times.items()},
                "full_over_fastvar": ratio("full", "fastvar"),
                "fastvar_with_deltas_over_fastvar": ratio("fastvar+deltas", "fastvar"),
            })  # fmt: skip

    result = {
        "what": f"{args.model} one transformer call per scale, full vs FastVAR (published Infinity setting), torch "
        f"eager on CPU, batch 1 with CFG (2 rows), {lt} text tokens; RANDOM WEIGHTS (timing only)",
        **provenance(args.warmup, args.repeat),
        "per_scale": rows,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    stem = RESULTS / f"{args.model}-fastvar-step-s{'-'.join(map(str, scales))}"
    ms = lambda s: f"{s['median'] * 1e3:.0f} ({s['p10'] * 1e3:.0f}-{s['p90'] * 1e3:.0f})"  # noqa: E731
    lines = [
        f"# {args.model}: FastVAR step vs full step (torch eager, CPU) — random weights",
        "",
        f"{result['what']}. Machine: {result['machine']}. Versions: {result['versions']}. Commit {result['commit']}.",
        f"Warm-up {args.warmup}, repeats {args.repeat}, the three calls alternating; median (p10-p90) in ms; "
        "ratios are taken per repeat.",
        "",
        "| scale | grid | keep / tokens | pruned blocks | full ms | FastVAR ms | full / FastVAR "
        "| FastVAR + deltas ms | (FastVAR + deltas) / FastVAR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in rows:
        (h, w), (a, b) = p["grid"], p["pruned_blocks"]
        q = lambda s: f"{s['median']:.2f} ({s['p10']:.2f}-{s['p90']:.2f})"  # noqa: E731
        lines.append(
            f"| {p['scale']} | {h}x{w} | {p['keep']}/{p['tokens']} | {a}-{b - 1} | {ms(p['full'])} | "
            f"{ms(p['fastvar'])} | {q(p['full_over_fastvar'])} | {ms(p['fastvar+deltas'])} | "
            f"{q(p['fastvar_with_deltas_over_fastvar'])} |"
        )
    lines += ["", f"Peak RSS {result['peak_rss_gb']:.1f} GB."]
    write_results(stem, {".json": json.dumps(result, indent=1), ".md": "\n".join(lines) + "\n"})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
