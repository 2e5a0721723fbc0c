"""``varrt``: the command line. One verb per job; errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from varrt.runtime import console as con


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: reported in one line. Anything else is a bug and keeps its traceback."""
    from varrt.engines.base import BackendUnavailable, EngineError

    return (ValueError, FileNotFoundError, EngineError, BackendUnavailable)


# ------------------------------------------------------------------------------------------ shared
def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint", type=Path, help="VAR checkpoint (.pth or .safetensors); default: the bundled demo model"
    )
    g.add_argument("--vae", type=Path, help="VQVAE checkpoint (vae_ch160v4096z32.pth or .safetensors)")
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="no checkpoint: a released architecture with random weights (smoke runs; images are noise)",
    )
    g.add_argument(
        "--model",
        default="var-d16",
        help="architecture for --random-weights (var-d16 ... var-d36); infinity-2b / infinity-8b select the "
        "text-to-image family (with --checkpoint, --vae, --text-encoder, --prompt)",
    )
    g.add_argument("--weights-seed", type=int, default=0, help="seed of the random weights")


def _add_policy_args(p: argparse.ArgumentParser, many: bool) -> None:
    g = p.add_argument_group("acceleration")
    action = "append" if many else "store"
    g.add_argument(
        "--policy",
        action=action,
        default=None,
        help="full (default), fastvar[:keep=0.5/0.25,blocks=2-14,reference=7], "
        "skipvar[:threshold=0.84|0.86|0.88,variant=diff_only,model=FILE]" + (" (repeat for a set)" if many else ""),
    )
    g.add_argument("--plan", action=action, default=None, type=str, help="a plan file (.json / .toml)")


def _policy_specs(args: argparse.Namespace) -> tuple[str, ...]:
    as_list = lambda v: [] if v is None else ([v] if isinstance(v, str) else list(v))  # noqa: E731
    specs = as_list(args.policy) + as_list(args.plan)
    for plan in as_list(args.plan):
        if Path(plan).suffix not in (".json", ".toml"):
            raise ValueError(f"--plan takes a plan file (.json / .toml), got {plan!r}; use --policy for named policies")
    return tuple(specs) or ("full",)


OFFICIAL_SAMPLING = {"cfg": 4.0, "top_k": 900, "top_p": 0.95}
BACKENDS = ["ort", "torch", "trt", "torch-graph"]


def _model_files(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """The checkpoint pair to use: --checkpoint/--vae, the bundled demo model, or None (random weights)."""
    from varrt.runtime.demo import demo_model

    if args.random_weights:
        if args.checkpoint or args.vae:
            raise ValueError("--random-weights and --checkpoint/--vae exclude each other")
        return None
    if args.checkpoint or args.vae:
        if not args.checkpoint or not args.vae:
            raise ValueError("give both --checkpoint and --vae (or neither, for the bundled demo model)")
        return args.checkpoint, args.vae
    demo = demo_model()
    return demo.var, demo.vqvae


def _sampling_defaults(args: argparse.Namespace) -> dict:
    """Official settings for official checkpoints; the demo model's own for the demo model."""
    from varrt.runtime.demo import demo_model

    if args.random_weights or args.checkpoint:
        return OFFICIAL_SAMPLING
    return demo_model().sampling


def _load_torch_models(args: argparse.Namespace):
    from varrt.export.checkpoint import load_models, random_models

    files = _model_files(args)
    if files is None:
        con.warn(
            f"--random-weights: {args.model} with random weights; the images are noise "
            "(use it for smoke runs and timing only)"
        )
        return random_models(args.model, seed=args.weights_seed)
    return load_models(*files)


def _set_threads(n: int | None) -> None:
    torch.set_num_threads(n or os.cpu_count() or 1)


def _add_export_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export")
    g.add_argument(
        "--precision",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="matmul/KV precision of the graphs (float32 for CPU; norms, softmax, logits stay float32)",
    )
    g.add_argument("--opset", type=int, default=20, help="ONNX opset (18-20)")
    g.add_argument("--force", action="store_true", help="replace an artifact that holds a different export")
    g.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs torch parity check")


def _export_request(args: argparse.Namespace, batch: int, policies: tuple[str, ...]):
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.artifacts import ExportRequest, checkpoint_source, random_source

    files = _model_files(args)
    if files is None:
        source = random_source(args.model, args.weights_seed)
    else:
        for p in files:
            if not p.exists():
                raise FileNotFoundError(f"checkpoint not found: {p}")
        source = checkpoint_source(*files)
    config = ExportConfig(precision=args.precision, opset=args.opset)
    return ExportRequest(source=source, policies=policies, batch=batch, config=config)


def _artifact_for(args: argparse.Namespace, batch: int, policies: tuple[str, ...], out: Path | None = None) -> Path:
    """Reuse or create the export for this model / policies / batch (the ORT backend's input)."""
    from varrt.runtime.artifacts import ensure_artifact

    request = _export_request(args, batch, policies)
    with con.status("export") as say:
        return ensure_artifact(
            request, lambda: _load_torch_models(args), out=out, force=args.force, validate=not args.no_validate, say=say
        )


def _make_engine(args: argparse.Namespace, batch: int, policies: tuple[str, ...]):
    if args.backend == "torch":
        from varrt.engines.torch_engine import TorchEngine

        return TorchEngine(*_load_torch_models(args))
    if args.backend == "torch-graph":
        from varrt.engines.torch_graph_engine import TorchGraphEngine

        var, vqvae = _load_torch_models(args)
        dtype = getattr(torch, getattr(args, "precision", "float32"))
        return TorchGraphEngine(var.to(dtype), vqvae, compile=getattr(args, "compile", False))
    artifact = args.artifact or _artifact_for(args, batch, policies)
    if args.backend == "trt":
        from varrt.engines.tensorrt_engine import TrtEngine

        with con.status("tensorrt") as say:
            return TrtEngine(artifact, say=say)
    from varrt.engines.ort_engine import OrtEngine

    return OrtEngine(artifact, providers=args.providers.split(","), threads=args.threads)


def _timing_table(result, engine, sched) -> None:
    rows = [
        [f"scale {si} ({pn}x{pn})", f"{s * 1e3:.1f}"]
        for si, (pn, s) in enumerate(zip(sched.patch_nums, result.scale_seconds))
    ]
    rows += [[k, f"{v * 1e3:.1f}"] for k, v in result.seconds.items()]
    con.console.print(con.table(f"timing ({engine.backend}, batch {len(result.labels)})", ["stage", "ms"], rows))


def _run_generation(engine, labels, args, policy_spec: str, sampling, quiet: bool):
    from varrt.runtime.generate import generate
    from varrt.runtime.policies import make_policy

    cfg = engine.var_config
    sched = cfg.schedule
    policy = make_policy(policy_spec, cfg)
    with con.progress(sched.num_scales, f"{cfg.label} [{engine.backend}, {policy.name}]", enabled=not quiet) as step:
        result = generate(
            engine,
            labels,
            batch=getattr(args, "batch", None),
            seed=args.seed,
            sampling=sampling,
            policy=policy,
            on_scale=lambda si, n, s: step(f"scale {si} ({sched.patch_nums[si]}x{sched.patch_nums[si]}) {s:.2f}s"),
        )
    if not quiet:
        _timing_table(result, engine, sched)
        if result.decisions:
            con.info(
                f"{policy.name}: " + "; ".join(f"after scale {d['scale']}: {d['plans']}" for d in result.decisions)
            )
    return result


# ------------------------------------------------------------------------------------------ generate
def _sampling(args: argparse.Namespace):
    from varrt.runtime.sampling import SamplingConfig

    d = {} if args.artifact and args.backend == "ort" else _sampling_defaults(args)
    d = {**OFFICIAL_SAMPLING, **d}
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else d[name]  # noqa: E731
    return SamplingConfig(cfg=pick("cfg"), top_k=pick("top_k"), top_p=pick("top_p"), more_smooth=args.more_smooth)


def cmd_generate(args: argparse.Namespace) -> int:
    from varrt.runtime.images import save_images
    from varrt.runtime.infinity_cli import cmd_generate_infinity, is_infinity

    if is_infinity(args):
        _set_threads(args.threads)
        return cmd_generate_infinity(args)
    sampling = _sampling(args)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if not args.classes and not args.batch:
        raise ValueError("give one or more --class ids (or --batch N for random classes)")
    specs = _policy_specs(args)
    _set_threads(args.threads)
    labels = args.classes or None
    engine = _make_engine(args, batch=len(labels) if labels else args.batch, policies=specs)
    result = _run_generation(engine, labels, args, specs[0], sampling, args.quiet)
    paths = save_images(result.images, args.out)
    if not args.quiet:
        con.info(f"wrote {len(paths)} image(s) to {args.out}/ (classes {result.labels.tolist()})")
    return 0


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the official 4 / 900 / 0.95, or the demo model's own)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cfg", type=float, help="guidance at the last scale (ramps from 0)")
    g.add_argument("--top-k", type=int, help="0 switches top-k off")
    g.add_argument("--top-p", type=float, help="1.0 switches top-p off")
    g.add_argument("--more-smooth", action="store_true", help="official Gumbel-softmax smoothing (visualisation)")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=["ort", "torch"],
        default="ort",
        help="ort: exported graphs in ONNX Runtime (default); torch: eager reference",
    )
    g.add_argument("--artifact", type=Path, help="ort: run this export directory (no checkpoint needed)")
    g.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ort: comma-separated execution providers, first = preferred",
    )
    g.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from varrt.runtime.infinity_cli import add_infinity_args

    p = sub.add_parser("generate", help="generate images: class-conditional (VAR) or from prompts (Infinity)")
    _add_model_args(p)
    add_infinity_args(p)
    p.add_argument(
        "--class",
        dest="classes",
        type=int,
        action="append",
        default=[],
        help="class id (repeat for a batch; 1000 = the null class)",
    )
    p.add_argument("--batch", type=int, help="without --class: this many random classes")
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory (000.png, 001.png, ...)")
    p.add_argument("--quiet", action="store_true")
    _add_sampling_args(p)
    _add_policy_args(p, many=False)
    _add_backend_args(p)
    _add_export_args(p)
    p.set_defaults(func=cmd_generate)


# ------------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from varrt.runtime.demo import demo_model, labelled_grid

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    demo = demo_model()
    for name in ("checkpoint", "vae", "random_weights", "artifact"):
        setattr(args, name, None)
    args.model, args.weights_seed, args.more_smooth = "demo", 0, False
    args.precision, args.opset = "float32", 20
    sampling = _sampling(args)
    _set_threads(args.threads)
    labels = [c for c in range(len(demo.classes)) for _ in range(args.per_class)]
    specs = (args.policy or "full",)
    engine = _make_engine(args, batch=len(labels), policies=specs)
    con.info(
        f"demo: {len(demo.classes)} photographs x {args.per_class} samples, cfg {sampling.cfg}, "
        f"{engine.backend} backend"
    )
    result = _run_generation(engine, labels, args, specs[0], sampling, quiet=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    labelled_grid(result.images, labels, demo.classes, columns=args.per_class).save(tmp)
    os.replace(tmp, out)
    con.info(f"wrote {out} ({len(labels)} images in {result.seconds['total']:.2f} s; rows: {', '.join(demo.classes)})")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a grid of images from the bundled demo model (ONNX Runtime on the CPU)")
    p.add_argument("--per-class", type=int, default=4, help="samples per photograph (default 4)")
    p.add_argument("--out", type=Path, default=Path("out/demo.png"))
    p.add_argument("--policy", default=None, help="acceleration policy (default full)")
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, help="guidance (default: the demo model's)")
    p.add_argument("--top-k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--top-p", type=float, help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=BACKENDS, default="ort")
    p.add_argument("--providers", default="CPUExecutionProvider", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)


# ------------------------------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> int:
    from varrt.export.artifact import read_manifest

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    _set_threads(args.threads)
    out = _artifact_for(args, args.batch, _policy_specs(args), out=args.out)
    m = read_manifest(out)
    rows = [[g.name, g.component, " ".join(f"{t.name}{list(t.shape)}" for t in g.inputs[:2])] for g in m.graphs]
    con.console.print(
        con.table(
            f"{m.var.label}: {len(m.graphs)} static graphs, precision {m.precision}, opset {m.opset}",
            ["graph", "component", "first inputs"],
            rows,
        )
    )
    size = sum((out / f).stat().st_size for f in m.files) / 2**20
    con.info(f"artifact: {out} ({size:.1f} MiB of weights and quantizer; checks: {', '.join(m.validation)})")
    print(out)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export per-scale static ONNX graphs (one shared weights file)")
    _add_model_args(p)
    _add_policy_args(p, many=True)
    p.add_argument("--batch", type=int, default=1, help="images per call (the graphs run 2 x batch rows with CFG)")
    p.add_argument("--out", type=Path, help="artifact directory (default: under $VARRT_CACHE, keyed by hash)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    _add_export_args(p)
    p.set_defaults(func=cmd_export)


# ------------------------------------------------------------------------------------------ eval / bench
def _bench_labels(args: argparse.Namespace, batch: int) -> list[int]:
    if args.random_weights or args.checkpoint:
        pool = [207, 88, 360, 980, 1, 292, 812, 417]
    else:
        from varrt.runtime.demo import demo_model

        pool = list(range(len(demo_model().classes)))
    return [pool[i % len(pool)] for i in range(batch)]


def _weights_label(args: argparse.Namespace) -> str:
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
    specs = [s for s in _policy_specs(args) if s != "full"]
    _set_threads(args.threads)
    batch = args.batch or (len(_bench_labels(args, 10)))
    labels = _bench_labels(args, batch)
    args.artifact = None
    engine = _make_engine(args, batch=batch, policies=("full", *specs))
    policies = [make_policy(s, engine.var_config) for s in specs]
    sampling = _sampling(args)
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
                    "weights": _weights_label(args),
                    "policies": report,
                },
                indent=1,
            )
        )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="fidelity (SSIM, PSNR) and speed of policies against the full plan")
    _add_model_args(p)
    _add_policy_args(p, many=True)
    p.add_argument("--seeds", type=int, default=16, help="seeds per class (default 16)")
    p.add_argument("--batch", type=int, help="classes per generation (default: 10)")
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    _add_sampling_args(p)
    _add_backend_args(p)
    _add_export_args(p)
    p.set_defaults(func=cmd_eval)


def cmd_bench(args: argparse.Namespace) -> int:
    from varrt.runtime.bench import BenchConfig, run_bench, write_report

    if args.batch < 1 or args.repeat < 1 or args.warmup < 0:
        raise ValueError("--batch and --repeat must be >= 1, --warmup >= 0")
    specs = _policy_specs(args)
    _set_threads(args.threads)
    labels = _bench_labels(args, args.batch)
    engines, weight_bytes = {}, {}
    for backend in args.backends.split(","):
        args.backend = backend
        args.artifact = None
        if backend == "torch":
            engines[backend] = engine = _make_engine(args, args.batch, specs)
            params = [*engine.var.parameters(), *engine.vqvae.decoder.parameters()]
            weight_bytes[backend] = sum(p.numel() * p.element_size() for p in params)
        elif backend in BACKENDS:
            engines[backend] = engine = _make_engine(args, args.batch, specs)
            artifact = getattr(engine, "artifact", None)
            weight_bytes[backend] = (artifact / "weights.bin").stat().st_size if artifact else None
        else:
            raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    fidelity = 0 if args.random_weights else args.fidelity_seeds
    config = BenchConfig(
        labels=labels,
        warmup=args.warmup,
        repeat=args.repeat,
        seed=args.seed,
        sampling=_sampling(args),
        fidelity_seeds=fidelity,
        weights=_weights_label(args),
    )
    with con.status("bench") as say:
        report = run_bench(engines, specs, config, weight_bytes, say)
    name = args.name or f"{engines[next(iter(engines))].var_config.label}-b{args.batch}"
    paths = write_report(report, args.out_dir, name)
    from varrt.runtime.bench import markdown

    con.console.print(markdown(report))
    con.info("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency of policies x backends, side by side; JSON + markdown + plots")
    _add_model_args(p)
    _add_policy_args(p, many=True)
    p.add_argument("--backends", default="torch,ort", help="comma-separated (default torch,ort)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--fidelity-seeds", type=int, default=8, help="seeds for SSIM/PSNR vs full (0: none)")
    p.add_argument("--name", help="report name (default: model-batch)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    _add_sampling_args(p)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--providers", default="CPUExecutionProvider", help="ort execution providers")
    _add_export_args(p)
    p.set_defaults(func=cmd_bench)


# ------------------------------------------------------------------------------------------ tensorrt
def cmd_build(args: argparse.Namespace) -> int:
    from varrt.engines.tensorrt_engine import build_artifact
    from varrt.engines.trt_config import BuildConfig

    precision = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(args.precision, args.precision)
    config = BuildConfig(opt_level=args.opt_level, workspace_gib=args.workspace)
    with con.status("build") as say:
        dirs = build_artifact(args.artifact, config, say, precision=precision)
    for comp, d in dirs.items():
        con.info(f"{comp}: {d}")
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build TensorRT engines (one per component, one profile per static shape)")
    p.add_argument("artifact", type=Path, help="an export directory (varrt export)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="check the artifact holds this precision")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0-5 (default 3)")
    p.add_argument("--workspace", type=float, default=4.0, help="workspace limit in GiB (default 4)")
    p.set_defaults(func=cmd_build)


def cmd_inspect(args: argparse.Namespace) -> int:
    from varrt.runtime.inspect import inspect_path

    con.console.print(inspect_path(args.path))
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what an export artifact, engine directory or ONNX file holds")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_inspect)


def cmd_doctor(args: argparse.Namespace) -> int:
    from varrt.runtime.inspect import doctor

    con.console.print(doctor())
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this machine can run: Python, torch, CUDA, GPU, ONNX Runtime, TensorRT")
    p.set_defaults(func=cmd_doctor)


def cmd_compare(args: argparse.Namespace) -> int:
    from varrt.export.artifact import read_manifest
    from varrt.runtime.inspect import compare_backends

    manifest = read_manifest(args.artifact)
    if manifest.family != "var":
        raise ValueError(
            f"{args.artifact} is an {manifest.family} artifact; `varrt compare` covers VAR artifacts so far "
            "(Infinity's backends are compared token for token by tests/test_infinity_generate.py)"
        )
    source = manifest.source
    if not (args.checkpoint or args.random_weights):  # the torch reference runs the weights the artifact came from
        if "var" in source and Path(source["var"]["path"]).exists() and Path(source["vae"]["path"]).exists():
            args.checkpoint, args.vae = Path(source["var"]["path"]), Path(source["vae"]["path"])
        elif "random_weights" in source:
            args.random_weights = True
            args.model, args.weights_seed = source["random_weights"]["model"], source["random_weights"]["seed"]
    con.console.print(
        compare_backends(args, lambda b: _make_engine(_with(args, backend=b, artifact=args.artifact), 1, ("full",)))
    )
    return 0


def _with(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="per-graph numerics of backends on an artifact (polygraphy's comparator)")
    p.add_argument("artifact", type=Path)
    p.add_argument("--backends", default="torch,ort", help="comma-separated; the first is the reference")
    p.add_argument("--graphs", help="comma-separated graph names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--providers", default="CPUExecutionProvider", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int)
    _add_model_args(p)
    _add_export_args(p)
    p.set_defaults(func=cmd_compare)


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


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="inspect plans and policies")
    psub = p.add_subparsers(dest="plan_command", required=True)
    show = psub.add_parser("show", help="the per-scale table of a policy's plans (budget, CFG, run, FLOPs)")
    show.add_argument("name", help="full, fastvar[:...], skipvar[:...] or a plan file")
    show.add_argument("--model", default="var-d16", help="architecture whose schedule and FLOPs to use")
    show.add_argument("--h-div-w", type=float, default=1.0, help="Infinity: aspect ratio h/w (nearest template)")
    show.add_argument("--pn", default="1M", help="Infinity: schedule size (0.06M, 0.25M, 0.60M, 1M)")
    show.add_argument("--text", type=int, default=64, help="Infinity: prompt tokens (T5 bucket) for the FLOPs")
    show.set_defaults(func=cmd_plan_show)


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="varrt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_generate(sub)
    _add_export(sub)
    _add_plan(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_build(sub)
    _add_inspect(sub)
    _add_doctor(sub)
    _add_compare(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"varrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
