"""Infinity-2B-size scale steps on torch vs ONNX Runtime, side by side (random weights).

    python tools/bench_infinity.py [--model infinity-2b] [--scales 5] [--repeat 3] [--text 64]

Builds the model with random weights (the figures say nothing about image quality), runs the
first ``--scales`` scales of the 1024 px schedule (batch 1 with CFG: 2 rows; random T5 features of
``--text`` tokens stand in for the text encoder, which is not part of this benchmark), exports the
conditioner + transformer for exactly those shapes, frees the torch model, and times the same
steps in ONNX Runtime. Each repeat runs every scale on one backend; medians and p10-p90 per scale
go to ``benchmarks/results/<model>-scales<N>-torch-vs-ort.{json,md}`` with the machine, versions,
commit, warm-up and repeat counts, and the torch/ORT ratios. The two backends get the same inputs
at every scale (the torch run's), so the per-scale logits are compared too.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from varrt.export.exporter import ExportConfig
from varrt.export.infinity import Infinity, scale_positions, text_bias
from varrt.export.infinity_config import BSQ_VAE_CONFIGS, INFINITY_CONFIGS, InfinitySchedule
from varrt.export.infinity_exporter import export_infinity_artifact
from varrt.export.infinity_graphs import (
    TextStepShape,
    infinity_conditioner_spec,
    infinity_transformer_spec,
)
from varrt.runtime.bench import provenance, stats, write_results

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def step_feeds(cfg, sched, si: int, cond: dict, kv: torch.Tensor, kv_bias: torch.Tensor, x: torch.Tensor) -> dict:
    n, rows = sched.tokens(si), x.shape[0]
    return {
        "x": x,
        "pos": scale_positions(sched, si).expand(rows, n, 3),
        **cond,
        "kv": kv,
        "kv_bias": kv_bias,
        "fill_idx": torch.arange(n).expand(rows, n),
        "fill_mask": torch.ones(rows, n),
        "restore": torch.zeros(rows, n, cfg.width),
    }


def run_scales(run, cfg, sched, scales: int, cond: dict, inputs: list[torch.Tensor], cap: int, lt: int):
    """One pass over the scales with ``run(spec, feeds)``: (seconds per scale, logits per scale)."""
    rows = inputs[0].shape[0]
    kv = torch.zeros(rows, cfg.depth, 2, cfg.heads, cap, cfg.head_dim)
    kv_bias = torch.full((cap,), -torch.inf)
    seconds, logits, slot = [], [], 0
    for si in range(scales):
        n, past = sched.tokens(si), max(1, slot)
        spec = infinity_transformer_spec(cfg, TextStepShape(rows, n, n, cap, past=past, text=lt))
        feeds = step_feeds(cfg, sched, si, cond, kv, kv_bias[:past], inputs[si])
        t0 = time.perf_counter()
        out = run(spec, feeds)
        seconds.append(time.perf_counter() - t0)
        kv[:, :, :, :, slot : slot + n] = out["new_kv"]
        kv_bias[slot : slot + n] = 0
        slot += n
        logits.append(out["logits"].clone())
    return seconds, logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="infinity-2b", choices=sorted(INFINITY_CONFIGS))
    ap.add_argument("--scales", type=int, default=5, help="the first N scales of the 1024 px schedule")
    ap.add_argument("--text", type=int, default=64, help="prompt tokens (T5 bucket)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = INFINITY_CONFIGS[args.model]
    full = InfinitySchedule.for_ratio(1.0, "1M")
    sched = InfinitySchedule(full.grids[: args.scales], full.rope_grid)
    cap, lt, rows = sched.total_tokens, args.text, 2

    print(f"building {args.model} with random weights ...", flush=True)
    with torch.inference_mode():
        model = Infinity(cfg).init_weights(0).eval().requires_grad_(False)
        g = torch.Generator().manual_seed(0)
        text = torch.randn(rows, lt, cfg.text_channels, generator=g)
        mask = torch.ones(rows, lt)
        cond_spec = infinity_conditioner_spec(cfg, rows, lt)
        cond_feeds = {"text": text, "text_mask": mask, "uncond": torch.tensor([0.0, 1.0])}
        from varrt.export.infinity_graphs import InfinityConditionerGraph, InfinityTransformerGraph

        cond_graph, step_graph = InfinityConditionerGraph(model), InfinityTransformerGraph(model)
        cond = dict(zip([t.name for t in cond_spec.outputs], cond_graph(**cond_feeds)))
        cond["text_bias"] = text_bias(mask)
        inputs = [torch.randn(rows, sched.tokens(si), cfg.d_vae, generator=g).sign() / cfg.d_vae**0.5
                  for si in range(args.scales)]  # fmt: skip

        def torch_run(spec, feeds, graph=step_graph):
            out = graph(*(feeds[t.name] for t in spec.inputs))
            return dict(zip([t.name for t in spec.outputs], out))

        times = {"torch": [], "ort": []}
        for r in range(args.warmup + args.repeat):
            secs, torch_logits = run_scales(torch_run, cfg, sched, args.scales, cond, inputs, cap, lt)
            print(f"torch pass {r}: {sum(secs):.2f} s", flush=True)
            if r >= args.warmup:
                times["torch"].append(secs)

    work = Path(tempfile.mkdtemp(prefix="varrt-bench-"))
    graphs = [cond_spec] + [
        infinity_transformer_spec(
            cfg,
            TextStepShape(rows, sched.tokens(si), sched.tokens(si), cap, past=max(1, sched.begin_ends[si][0]), text=lt),
        )
        for si in range(args.scales)
    ]
    t0 = time.perf_counter()
    from varrt.export.bsq_vae import BSQVAE

    with torch.device("meta"):
        vae = BSQVAE(BSQ_VAE_CONFIGS["infinity_vae_d32"])  # not exported (no decoder graph requested)
    export_infinity_artifact(
        model, vae, None, graphs, work / "a", config=ExportConfig(), schedule=sched, batch=1, kv_capacity=cap,
        plans=[], source={"random_weights": {"model": args.model, "seed": 0}}, progress=lambda m: print(m, flush=True),
    )  # fmt: skip
    export_s = time.perf_counter() - t0
    del model, cond_graph, step_graph
    gc.collect()

    from varrt.engines.ort_engine import OrtEngine

    engine = OrtEngine(work / "a", threads=args.threads)
    ort_cond = engine.run(cond_spec, cond_feeds)
    cond_diff = max(float((ort_cond[k] - cond[k]).abs().max()) for k in ort_cond)
    ort_cond["text_bias"] = cond["text_bias"]
    for r in range(args.warmup + args.repeat):
        secs, ort_logits = run_scales(engine.run, cfg, sched, args.scales, ort_cond, inputs, cap, lt)
        print(f"ort pass {r}: {sum(secs):.2f} s", flush=True)
        if r >= args.warmup:
            times["ort"].append(secs)

    per_scale = []
    for si in range(args.scales):
        t = stats([p[si] for p in times["torch"]])
        o = stats([p[si] for p in times["ort"]])
        diff = float((torch_logits[si] - ort_logits[si]).abs().max())
        per_scale.append({"scale": si, "grid": sched.grids[si], "torch": t, "ort": o,
                          "torch_over_ort": t["median"] / o["median"], "max_abs_logit_diff": diff})  # fmt: skip
    total_t = stats([sum(p) for p in times["torch"]])
    total_o = stats([sum(p) for p in times["ort"]])
    result = {
        "what": f"{args.model} transformer steps, scales 0..{args.scales - 1} of the 1024 px schedule, batch 1 with "
        f"CFG (2 rows), {lt} text tokens; RANDOM WEIGHTS (timing only)",
        **provenance(args.warmup, args.repeat),
        "export_seconds": export_s,
        "conditioner_max_abs_diff": cond_diff,
        "per_scale": per_scale,
        "total": {"torch": total_t, "ort": total_o, "torch_over_ort": total_t["median"] / total_o["median"]},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    stem = RESULTS / f"{args.model}-scales{args.scales}-torch-vs-ort"
    ms = lambda s: f"{s['median'] * 1e3:.0f} ({s['p10'] * 1e3:.0f}-{s['p90'] * 1e3:.0f})"  # noqa: E731
    lines = [
        f"# {args.model}: torch eager vs ONNX Runtime (CPU), per scale — random weights",
        "",
        f"{result['what']}. Machine: {result['machine']}. Versions: {result['versions']}. Commit {result['commit']}.",
        f"Warm-up {args.warmup}, repeats {args.repeat}; median (p10-p90) in ms; ratios from the same run.",
        "",
        "| scale | grid | torch ms | ORT ms | torch / ORT | max abs logit diff |",
        "|---|---|---|---|---|---|",
    ]
    for p in per_scale:
        h, w = p["grid"]
        lines.append(f"| {p['scale']} | {h}x{w} | {ms(p['torch'])} | {ms(p['ort'])} | {p['torch_over_ort']:.2f} | "
                     f"{p['max_abs_logit_diff']:.1e} |")  # fmt: skip
    lines.append(f"| all | | {ms(total_t)} | {ms(total_o)} | {result['total']['torch_over_ort']:.2f} | |")
    lines += [
        "",
        f"Export of the conditioner + transformer graphs: {export_s:.0f} s. Peak RSS {result['peak_rss_gb']:.1f} GB.",
    ]
    write_results(stem, {".json": json.dumps(result, indent=1), ".md": "\n".join(lines) + "\n"})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
