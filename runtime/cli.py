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
    g.add_argument("--checkpoint", type=Path, help="VAR checkpoint (.pth or .safetensors)")
    g.add_argument("--vae", type=Path, help="VQVAE checkpoint (vae_ch160v4096z32.pth or .safetensors)")
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="no checkpoint: a released architecture with random weights (smoke runs; images are noise)",
    )
    g.add_argument("--model", default="var-d16", help="architecture for --random-weights (var-d16 ... var-d36)")
    g.add_argument("--weights-seed", type=int, default=0, help="seed of the random weights")


def _load_torch_models(args: argparse.Namespace):
    from varrt.export.checkpoint import load_models, random_models

    if args.random_weights:
        if args.checkpoint or args.vae:
            raise ValueError("--random-weights and --checkpoint/--vae exclude each other")
        con.warn(
            f"--random-weights: {args.model} with random weights; the images are noise "
            "(use it for smoke runs and timing only)"
        )
        return random_models(args.model, seed=args.weights_seed)
    if not args.checkpoint or not args.vae:
        raise ValueError("give --checkpoint and --vae (or --random-weights --model NAME for a smoke run)")
    return load_models(args.checkpoint, args.vae)


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


def _export_request(args: argparse.Namespace, batch: int):
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.artifacts import ExportRequest, checkpoint_source, random_source

    if args.random_weights:
        source = random_source(args.model, args.weights_seed)
    elif args.checkpoint and args.vae:
        for p in (args.checkpoint, args.vae):
            if not p.exists():
                raise FileNotFoundError(f"checkpoint not found: {p}")
        source = checkpoint_source(args.checkpoint, args.vae)
    else:
        raise ValueError("give --checkpoint and --vae (or --random-weights --model NAME for a smoke run)")
    config = ExportConfig(precision=getattr(args, "precision", "float32"), opset=getattr(args, "opset", 20))
    return ExportRequest(source=source, plans=tuple(args.plan), batch=batch, config=config)


def _artifact_for(args: argparse.Namespace, batch: int, out: Path | None = None) -> Path:
    """Reuse or create the export for this model / plan / batch (the ORT backend's input)."""
    from varrt.runtime.artifacts import ensure_artifact

    request = _export_request(args, batch)
    with con.status("export") as say:
        return ensure_artifact(
            request, lambda: _load_torch_models(args), out=out, force=args.force, validate=not args.no_validate, say=say
        )


def _make_engine(args: argparse.Namespace, batch: int):
    if args.backend == "torch":
        from varrt.engines.torch_engine import TorchEngine

        return TorchEngine(*_load_torch_models(args))
    from varrt.engines.ort_engine import OrtEngine

    artifact = args.artifact or _artifact_for(args, batch)
    return OrtEngine(artifact, providers=args.providers.split(","), threads=args.threads)


# ------------------------------------------------------------------------------------------ generate
def cmd_generate(args: argparse.Namespace) -> int:
    from varrt.runtime.generate import generate
    from varrt.runtime.images import save_images
    from varrt.runtime.sampling import SamplingConfig

    sampling = SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, more_smooth=args.more_smooth)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if not args.classes and not args.batch:
        raise ValueError("give one or more --class ids (or --batch N for random classes)")
    _set_threads(args.threads)
    labels = args.classes or None
    engine = _make_engine(args, batch=len(labels) if labels else args.batch)
    cfg = engine.var_config
    sched = cfg.schedule
    with con.progress(sched.num_scales, f"{cfg.label} [{engine.backend}]", enabled=not args.quiet) as advance:
        result = generate(
            engine,
            labels,
            batch=args.batch,
            seed=args.seed,
            sampling=sampling,
            on_scale=lambda si, n, s: advance(f"scale {si} ({sched.patch_nums[si]}x{sched.patch_nums[si]}) {s:.2f}s"),
        )
    paths = save_images(result.images, args.out)
    if not args.quiet:
        rows = [
            [f"scale {si} ({pn}x{pn})", f"{s * 1e3:.1f}"]
            for si, (pn, s) in enumerate(zip(sched.patch_nums, result.scale_seconds))
        ]
        rows += [[k, f"{v * 1e3:.1f}"] for k, v in result.seconds.items()]
        con.console.print(con.table(f"timing ({engine.backend}, batch {len(paths)})", ["stage", "ms"], rows))
        con.info(f"wrote {len(paths)} image(s) to {args.out}/ (classes {result.labels.tolist()})")
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate class-conditional images")
    _add_model_args(p)
    p.add_argument(
        "--class",
        dest="classes",
        type=int,
        action="append",
        default=[],
        help="class id (repeat for a batch; 1000 = the null class)",
    )
    p.add_argument("--batch", type=int, help="without --class: this many random classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=4.0, help="guidance at the last scale (ramps from 0)")
    p.add_argument("--top-k", type=int, default=900, help="0 switches top-k off")
    p.add_argument("--top-p", type=float, default=0.95, help="1.0 switches top-p off")
    p.add_argument("--more-smooth", action="store_true", help="official Gumbel-softmax smoothing (visualisation)")
    p.add_argument(
        "--backend",
        choices=["ort", "torch"],
        default="ort",
        help="ort: exported graphs in ONNX Runtime (default); torch: eager reference",
    )
    p.add_argument("--artifact", type=Path, help="ort: run this export directory (no checkpoint needed)")
    p.add_argument("--plan", action="append", default=None, help="plan name or file (default: full)")
    p.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ort: comma-separated execution providers, first = preferred",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    _add_export_args(p)
    p.add_argument("--out", type=Path, default=Path("out"), help="output directory (000.png, 001.png, ...)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)


# ------------------------------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> int:
    from varrt.export.artifact import read_manifest

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    _set_threads(args.threads)
    out = _artifact_for(args, args.batch, out=args.out)
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
    con.info(
        f"artifact: {out} ({size:.1f} MiB of weights and quantizer; validation: "
        f"{', '.join(f'{k}' for k in m.validation)})"
    )
    print(out)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export per-scale static ONNX graphs (one shared weights file)")
    _add_model_args(p)
    p.add_argument("--plan", action="append", default=None, help="plan name or file (repeat for a set; default full)")
    p.add_argument("--batch", type=int, default=1, help="images per call (the graphs run 2 x batch rows with CFG)")
    p.add_argument("--out", type=Path, help="artifact directory (default: under $VARRT_CACHE, keyed by hash)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    _add_export_args(p)
    p.set_defaults(func=cmd_export)


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="varrt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_export(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "plan", "absent") is None:
        args.plan = ["full"]
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
