"""``varrt eval`` and ``varrt bench``: fidelity and speed of policies against the full plan."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import (
    add_backend_args,
    add_export_args,
    add_model_args,
    add_policy_args,
    add_sampling_args,
    pipeline_for,
    policy_specs,
    preflight,
    sampling_overrides,
    var_only,
    with_changes,
)


# ------------------------------------------------------------------------------------------ eval / bench
def bench_labels(args: argparse.Namespace, batch: int) -> list[int]:
    if args.random_weights or args.checkpoint:
        pool = [207, 88, 360, 980, 1, 292, 812, 417]
    else:
        from varrt.runtime.demo import demo_model

        pool = list(range(len(demo_model().classes)))
    return [pool[i % len(pool)] for i in range(batch)]


def cmd_eval(args: argparse.Namespace) -> int:
    from varrt.runtime.evaluate import evaluate
    from varrt.runtime.outputs import check_file, write_text

    if args.random_weights:
        raise ValueError(
            "fidelity needs weights that mean something: use the demo model or a checkpoint, not --random-weights"
        )
    var_only(args, "eval")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1 (seeds per class), got {args.seeds}")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    preflight(args)
    if args.out:
        check_file(args.out, "--out", suffixes=(".json",))
    specs = [s for s in policy_specs(args) if s != "full"]
    batch = args.batch or (len(bench_labels(args, 10)))
    labels = bench_labels(args, batch)
    pipe = pipeline_for(args, batch=batch, policies=("full", *specs))
    if pipe.weights is not None and pipe.weights.random:
        raise ValueError(f"{args.artifact} holds random weights; fidelity needs weights that mean something")
    sampling = pipe.sampling(sampling_overrides(args))
    with con.status("eval", enabled=not args.json) as say:
        report = evaluate(pipe, specs, labels, list(range(args.seeds)), sampling, progress=say)
    data = {
        "model": pipe.label,
        "labels": labels,
        "seeds": args.seeds,
        "backend": pipe.backend,
        "weights": pipe.weights.label if pipe.weights else "unknown",
        "sampling": vars(sampling),
        "policies": report,
    }
    if args.out:
        write_text(args.out, json.dumps(data, indent=1))
    if args.json:
        con.print_json(data)
        return 0
    rows = [
        [
            name,
            f"{r['ssim']['mean']:.4f}",
            f"{r['ssim']['worst5']:.4f}",
            f"{r['psnr']['mean']:.2f}",
            f"{r['psnr']['worst5']:.2f}",
            f"{r['flops_ratio']:.3f}",
            f"{r['latency_ratio']:.3f}",
        ]
        for name, r in report.items()
    ]
    con.result(
        con.table(
            f"{pipe.label} on {pipe.backend}: {args.seeds} seeds x {batch} classes vs full",
            ["policy", "SSIM", "SSIM worst 5%", "PSNR dB", "PSNR worst 5%", "FLOPs ratio", "latency ratio"],
            rows,
        )
    )
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="fidelity (SSIM, PSNR) and speed of policies against the full plan")
    add_model_args(p)
    add_policy_args(p, many=True)
    p.add_argument("--seeds", type=int, default=16, help="seeds per class (default 16)")
    p.add_argument("--batch", type=int, help="classes per generation (default: 10)")
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    p.add_argument("--json", action="store_true", help="print the report as JSON (stdout) instead of a table")
    add_sampling_args(p)
    add_backend_args(p)
    add_export_args(p)
    p.set_defaults(func=cmd_eval)


def cmd_bench(args: argparse.Namespace) -> int:
    from varrt.runtime.bench import BenchConfig, markdown, run_bench, write_report
    from varrt.runtime.outputs import check_dir

    if args.batch < 1 or args.repeat < 1 or args.warmup < 0 or args.fidelity_seeds < 0:
        raise ValueError("--batch and --repeat must be >= 1, --warmup and --fidelity-seeds >= 0")
    var_only(args, "bench")
    backends = args.backends.split(",")
    for backend in backends:  # all of them before any model is loaded or exported
        preflight(with_changes(args, backend=backend))
    check_dir(args.out_dir, "--out-dir")
    specs = policy_specs(args)
    exported = tuple(dict.fromkeys(("full", *specs)))  # every speed-up is against full, so full runs too
    labels = bench_labels(args, args.batch)
    pipes, weight_bytes = {}, {}
    for backend in backends:
        pipe = pipes[backend] = pipeline_for(with_changes(args, backend=backend), args.batch, exported)
        engine = pipe.engine
        if backend in ("torch", "torch-graph"):  # the same --precision as the exported backends
            params = [*engine.var.parameters(), *engine.vqvae.decoder.parameters()]
            weight_bytes[backend] = sum(p.numel() * p.element_size() for p in params)
        else:
            manifest = getattr(engine, "manifest", None)
            weight_bytes[backend] = manifest.files["weights.bin"]["bytes"] if manifest else None
    first = next(iter(pipes.values()))
    fidelity = 0 if args.random_weights else args.fidelity_seeds
    config = BenchConfig(
        labels=labels,
        warmup=args.warmup,
        repeat=args.repeat,
        seed=args.seed,
        sampling=first.sampling(sampling_overrides(args)),
        fidelity_seeds=fidelity,
        weights=first.weights.label,
    )
    with con.status("bench", enabled=not args.json) as say:
        report = run_bench(pipes, specs, config, weight_bytes, say)
    report["precision"] = {b: backend_precision(b, args.precision) for b in backends}
    name = args.name or f"{first.label}-b{args.batch}"
    paths = write_report(report, args.out_dir, name)
    if args.json:
        con.print_json(report)
    else:
        con.result(markdown(report))
    con.info("wrote " + ", ".join(str(p) for p in paths))
    return 0


def backend_precision(backend: str, precision: str) -> str:
    """What a backend computes for ``--precision``: the eager backends have no quantized path, they
    run a quantized precision's fp32 reference."""
    from varrt.export.quantize import QUANTIZED

    if backend in ("torch", "torch-graph") and precision in QUANTIZED:
        return "float32"
    return precision


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency of policies x backends, side by side; JSON + markdown + plots")
    add_model_args(p)
    add_policy_args(p, many=True)
    p.add_argument(
        "--backends", default="torch,ort", help="comma-separated: ort, torch, trt, torch-graph (default torch,ort)"
    )
    p.add_argument("--compile", action="store_true", help="torch-graph: torch.compile every graph first")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--fidelity-seeds", type=int, default=8, help="seeds for SSIM/PSNR vs full (0: none)")
    p.add_argument("--name", help="report name (default: model-batch)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--json", action="store_true", help="print the report as JSON (stdout) instead of markdown")
    add_sampling_args(p)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--providers", default="CPUExecutionProvider", help="ort execution providers")
    add_export_args(p)
    p.set_defaults(func=cmd_bench)
