"""``varrt eval`` and ``varrt bench``: fidelity and speed of policies against the full plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import (
    add_backend_args,
    add_export_args,
    add_model_args,
    add_policy_args,
    add_sampling_args,
    check_backend,
    make_engine,
    policy_specs,
    sampling_config,
    set_threads,
)


# ------------------------------------------------------------------------------------------ eval / bench
def bench_labels(args: argparse.Namespace, batch: int) -> list[int]:
    if args.random_weights or args.checkpoint:
        pool = [207, 88, 360, 980, 1, 292, 812, 417]
    else:
        from varrt.runtime.demo import demo_model

        pool = list(range(len(demo_model().classes)))
    return [pool[i % len(pool)] for i in range(batch)]


def weights_label(args: argparse.Namespace) -> str:
    if args.random_weights:
        return f"random ({args.model})"
    if args.checkpoint:
        return f"checkpoint {args.checkpoint.name}"
    return "demo model (trained on scikit-image photographs)"


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from varrt.runtime.evaluate import evaluate
    from varrt.runtime.policies import make_policy

    if args.random_weights:
        raise ValueError(
            "fidelity needs weights that mean something: use the demo model or a checkpoint, not --random-weights"
        )
    specs = [s for s in policy_specs(args) if s != "full"]
    check_backend(args.backend)
    set_threads(args.threads)
    batch = args.batch or (len(bench_labels(args, 10)))
    labels = bench_labels(args, batch)
    args.artifact = None
    engine = make_engine(args, batch=batch, policies=("full", *specs))
    policies = [make_policy(s, engine.var_config) for s in specs]
    sampling = sampling_config(args)
    with con.status("eval") as say:
        report = evaluate(engine, policies, labels, list(range(args.seeds)), sampling, progress=say)
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
    con.console.print(
        con.table(
            f"{engine.var_config.label} on {engine.backend}: {args.seeds} seeds x {batch} classes vs full",
            ["policy", "SSIM", "SSIM worst 5%", "PSNR dB", "PSNR worst 5%", "FLOPs ratio", "latency ratio"],
            rows,
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "labels": labels,
                    "seeds": args.seeds,
                    "backend": engine.backend,
                    "weights": weights_label(args),
                    "policies": report,
                },
                indent=1,
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
    add_sampling_args(p)
    add_backend_args(p)
    add_export_args(p)
    p.set_defaults(func=cmd_eval)


def cmd_bench(args: argparse.Namespace) -> int:
    from varrt.runtime.bench import BenchConfig, run_bench, write_report

    if args.batch < 1 or args.repeat < 1 or args.warmup < 0:
        raise ValueError("--batch and --repeat must be >= 1, --warmup >= 0")
    specs = policy_specs(args)
    set_threads(args.threads)
    labels = bench_labels(args, args.batch)
    backends = args.backends.split(",")
    for backend in backends:  # all of them before any model is loaded or exported
        check_backend(backend)
    engines, weight_bytes = {}, {}
    for backend in backends:
        args.backend = backend
        args.artifact = None
        engines[backend] = engine = make_engine(args, args.batch, specs)
        if backend in ("torch", "torch-graph"):  # the same --precision as the exported backends
            params = [*engine.var.parameters(), *engine.vqvae.decoder.parameters()]
            weight_bytes[backend] = sum(p.numel() * p.element_size() for p in params)
        else:
            artifact = getattr(engine, "artifact", None)
            weight_bytes[backend] = (artifact / "weights.bin").stat().st_size if artifact else None
    fidelity = 0 if args.random_weights else args.fidelity_seeds
    config = BenchConfig(
        labels=labels,
        warmup=args.warmup,
        repeat=args.repeat,
        seed=args.seed,
        sampling=sampling_config(args),
        fidelity_seeds=fidelity,
        weights=weights_label(args),
    )
    with con.status("bench") as say:
        report = run_bench(engines, specs, config, weight_bytes, say)
    name = args.name or f"{engines[next(iter(engines))].var_config.label}-b{args.batch}"
    paths = write_report(report, args.out_dir, name)
    from varrt.runtime.bench import markdown

    con.console.print(markdown(report))
    con.info("wrote " + ", ".join(str(p) for p in paths))
    return 0


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
    add_sampling_args(p)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--providers", default="CPUExecutionProvider", help="ort execution providers")
    add_export_args(p)
    p.set_defaults(func=cmd_bench)
