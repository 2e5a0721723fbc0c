"""``varrt export`` and ``varrt build``: artifacts and TensorRT engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import (
    add_export_args,
    add_model_args,
    add_policy_args,
    artifact_for,
    policy_specs,
    set_threads,
)


def cmd_export(args: argparse.Namespace) -> int:
    from varrt.export.artifact import read_manifest

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    set_threads(args.threads)
    out = artifact_for(args, args.batch, policy_specs(args), out=args.out)
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


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export per-scale static ONNX graphs (one shared weights file)")
    add_model_args(p)
    add_policy_args(p, many=True)
    p.add_argument("--batch", type=int, default=1, help="images per call (the graphs run 2 x batch rows with CFG)")
    p.add_argument("--out", type=Path, help="artifact directory (default: under $VARRT_CACHE, keyed by hash)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_export_args(p)
    p.set_defaults(func=cmd_export)


# ------------------------------------------------------------------------------------------ tensorrt
def cmd_build(args: argparse.Namespace) -> int:
    from varrt.engines.tensorrt_engine import import_tensorrt
    from varrt.engines.trt_build import build_artifact
    from varrt.engines.trt_config import BuildConfig

    import_tensorrt()
    precision = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(args.precision, args.precision)
    config = BuildConfig(opt_level=args.opt_level, workspace_gib=args.workspace, tf32=args.tf32)
    with con.status("build") as say:
        dirs = build_artifact(args.artifact, config, say, precision=precision, strict_weights=args.strict_weights)
    for comp, d in dirs.items():
        con.info(f"{comp}: {d}")
    return 0


def add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build TensorRT engines (one per component, one profile per static shape)")
    p.add_argument("artifact", type=Path, help="an export directory (varrt export)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="check the artifact holds this precision")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0-5 (default 3)")
    p.add_argument("--workspace", type=float, default=4.0, help="workspace limit in GiB (default 4)")
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 for fp32 math (TensorRT's default: on); --no-tf32 for fp32 parity with torch",
    )
    p.add_argument(
        "--strict-weights",
        action="store_true",
        help="fail (instead of warning) when an engine's weights look duplicated across its profiles",
    )
    p.set_defaults(func=cmd_build)
