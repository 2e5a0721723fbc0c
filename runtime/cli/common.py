"""Argument groups and steps that several verbs share: model files, policies, export, the engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from varrt.runtime import console as con


# ------------------------------------------------------------------------------------------ shared
def add_model_args(p: argparse.ArgumentParser) -> None:
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


def add_policy_args(p: argparse.ArgumentParser, many: bool) -> None:
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


def policy_specs(args: argparse.Namespace) -> tuple[str, ...]:
    as_list = lambda v: [] if v is None else ([v] if isinstance(v, str) else list(v))  # noqa: E731
    specs = as_list(args.policy) + as_list(args.plan)
    for plan in as_list(args.plan):
        if Path(plan).suffix not in (".json", ".toml"):
            raise ValueError(f"--plan takes a plan file (.json / .toml), got {plan!r}; use --policy for named policies")
    return tuple(specs) or ("full",)


OFFICIAL_SAMPLING = {"cfg": 4.0, "top_k": 900, "top_p": 0.95}
BACKENDS = ["ort", "torch", "trt", "torch-graph"]


def check_backend(backend: str) -> None:
    """Fail in one line, before any export or model loading, when ``backend`` cannot run here."""
    from varrt.engines.base import BackendUnavailable

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend == "trt":
        from varrt.engines.tensorrt_engine import import_tensorrt

        import_tensorrt()
    elif backend == "torch-graph" and not torch.cuda.is_available():
        raise BackendUnavailable(
            "torch-graph needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
            "see README, 'On an NVIDIA GPU', and `varrt doctor`"
        )
    elif backend == "ort":
        from varrt.engines.ort_engine import _import_ort

        _import_ort()


def model_files(args: argparse.Namespace) -> tuple[Path, Path] | None:
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


def sampling_defaults(args: argparse.Namespace) -> dict:
    """Official settings for official checkpoints; the demo model's own for the demo model."""
    from varrt.runtime.demo import demo_model

    if args.random_weights or args.checkpoint:
        return OFFICIAL_SAMPLING
    return demo_model().sampling


def load_torch_models(args: argparse.Namespace):
    from varrt.export.checkpoint import load_models, random_models

    files = model_files(args)
    if files is None:
        con.warn(
            f"--random-weights: {args.model} with random weights; the images are noise "
            "(use it for smoke runs and timing only)"
        )
        return random_models(args.model, seed=args.weights_seed)
    return load_models(*files)


def set_threads(n: int | None) -> None:
    torch.set_num_threads(n or os.cpu_count() or 1)


def add_export_args(p: argparse.ArgumentParser) -> None:
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


def export_request(args: argparse.Namespace, batch: int, policies: tuple[str, ...]):
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.artifacts import ExportRequest, checkpoint_source, random_source

    files = model_files(args)
    if files is None:
        source = random_source(args.model, args.weights_seed)
    else:
        for p in files:
            if not p.exists():
                raise FileNotFoundError(f"checkpoint not found: {p}")
        source = checkpoint_source(*files)
    config = ExportConfig(precision=args.precision, opset=args.opset)
    return ExportRequest(source=source, policies=policies, batch=batch, config=config)


def artifact_for(args: argparse.Namespace, batch: int, policies: tuple[str, ...], out: Path | None = None) -> Path:
    """Reuse or create the export for this model / policies / batch (the ORT backend's input)."""
    from varrt.runtime.artifacts import ensure_artifact

    request = export_request(args, batch, policies)
    with con.status("export") as say:
        return ensure_artifact(
            request, lambda: load_torch_models(args), out=out, force=args.force, validate=not args.no_validate, say=say
        )


def make_engine(args: argparse.Namespace, batch: int, policies: tuple[str, ...]):
    """The engine of ``args.backend``; the eager backends compute at ``--precision`` as an export
    of that precision does (so torch and torch-graph are compared at the same precision)."""
    check_backend(args.backend)
    if args.backend in ("torch", "torch-graph"):
        from varrt.export.exporter import precision_models

        var, vqvae = precision_models(*load_torch_models(args), getattr(args, "precision", "float32"))
        if args.backend == "torch":
            from varrt.engines.torch_engine import TorchEngine

            return TorchEngine(var, vqvae)
        from varrt.engines.torch_graph_engine import TorchGraphEngine

        return TorchGraphEngine(var, vqvae, compile=getattr(args, "compile", False))
    artifact = args.artifact or artifact_for(args, batch, policies)
    if args.backend == "trt":
        from varrt.engines.tensorrt_engine import TrtEngine
        from varrt.engines.trt_config import BuildConfig

        with con.status("tensorrt") as say:
            return TrtEngine(artifact, BuildConfig(tf32=getattr(args, "tf32", True)), say=say)
    from varrt.engines.ort_engine import OrtEngine

    return OrtEngine(artifact, providers=args.providers.split(","), threads=args.threads)


def timing_table(result, engine, sched) -> None:
    rows = [
        [f"scale {si} ({pn}x{pn})", f"{s * 1e3:.1f}"]
        for si, (pn, s) in enumerate(zip(sched.patch_nums, result.scale_seconds))
    ]
    rows += [[k, f"{v * 1e3:.1f}"] for k, v in result.seconds.items()]
    con.console.print(con.table(f"timing ({engine.backend}, batch {len(result.labels)})", ["stage", "ms"], rows))


def run_generation(engine, labels, args, policy_spec: str, sampling, quiet: bool):
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
        timing_table(result, engine, sched)
        if result.decisions:
            con.info(
                f"{policy.name}: " + "; ".join(f"after scale {d['scale']}: {d['plans']}" for d in result.decisions)
            )
    return result


def sampling_config(args: argparse.Namespace):
    from varrt.runtime.sampling import SamplingConfig

    d = {} if args.artifact and args.backend == "ort" else sampling_defaults(args)
    d = {**OFFICIAL_SAMPLING, **d}
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else d[name]  # noqa: E731
    return SamplingConfig(cfg=pick("cfg"), top_k=pick("top_k"), top_p=pick("top_p"), more_smooth=args.more_smooth)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the official 4 / 900 / 0.95, or the demo model's own)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cfg", type=float, help="guidance at the last scale (ramps from 0)")
    g.add_argument("--top-k", type=int, help="0 switches top-k off")
    g.add_argument("--top-p", type=float, help="1.0 switches top-p off")
    g.add_argument("--more-smooth", action="store_true", help="official Gumbel-softmax smoothing (visualisation)")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    add_backend_choice(g)
    g.add_argument("--artifact", type=Path, help="ort / trt: run this export directory (no checkpoint needed)")
    g.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ort: comma-separated execution providers, first = preferred",
    )
    g.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def add_backend_choice(g) -> None:
    """``--backend`` (every backend, on every verb that generates) and ``--compile`` (torch-graph)."""
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="ort",
        help="ort: exported graphs in ONNX Runtime (default); torch: eager reference; trt: TensorRT engines "
        "(NVIDIA GPU + TensorRT); torch-graph: eager modules in CUDA graphs (NVIDIA GPU)",
    )
    g.add_argument("--compile", action="store_true", help="torch-graph: torch.compile every graph first")


def with_changes(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})
