"""``varrt export`` and ``varrt build``: artifacts and TensorRT engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import (
    add_export_args,
    add_model_args,
    add_policy_args,
    export_options,
    is_infinity,
    policy_specs,
    set_threads,
    status,
    weights_of,
)


def cmd_export(args: argparse.Namespace) -> int:
    from varrt.export.artifact import artifact_file, read_manifest
    from varrt.runtime.outputs import check_dir
    from varrt.runtime.pipeline import export_for

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    set_threads(args.threads)
    options = export_options(args, args.out)  # precision and opset checked here, before any loading
    prompts = prompt_shape(args) if is_infinity(args) else None
    shaped = (args.pn, args.h_div_w, args.text_length)
    if prompts is None and (any(x is not None for x in shaped) or args.negative):
        raise ValueError("--pn, --h-div-w, --text-length and --negative shape an Infinity export (--model infinity-2b)")
    if args.out is not None:
        check_dir(args.out, "--out")
    weights = weights_of(args).check()
    with status("export", args) as say:
        out = export_for(weights, policy_specs(args), args.batch, options, prompts=prompts, say=say)
    m = read_manifest(out)
    rows = [[g.name, g.component, " ".join(f"{t.name}{list(t.shape)}" for t in g.inputs[:2])] for g in m.graphs]
    con.console.print(
        con.table(
            f"{m.label}: {len(m.graphs)} static graphs, precision {m.precision}, opset {m.opset}",
            ["graph", "component", "first inputs"],
            rows,
        )
    )
    size = sum(artifact_file(out, m, f).stat().st_size for f in m.files) / 2**20
    con.info(f"artifact: {out} ({size:.1f} MiB of weights and quantizer; checks: {', '.join(m.validation)})")
    print(out)  # stdout: the artifact's path alone, for scripts (the table above is on stderr)
    return 0


def prompt_shape(args: argparse.Namespace):
    """What an Infinity export is built for besides the batch: schedule, text bucket, negative rows."""
    from varrt.export.infinity_config import InfinitySchedule
    from varrt.export.text_encoder import TEXT_BUCKETS
    from varrt.runtime.pipeline import PromptShape

    if args.h_div_w is not None and not args.h_div_w > 0:
        raise ValueError(f"--h-div-w must be > 0, got {args.h_div_w}")
    length = TEXT_BUCKETS[0] if args.text_length is None else args.text_length
    if not 1 <= length <= 512:
        raise ValueError(f"--text-length is the padded prompt length in T5 tokens (1-512), got {length}")
    return PromptShape(InfinitySchedule.for_ratio(args.h_div_w or 1.0, args.pn or "1M"), length, args.negative)


#: measured: benchmarks/results/export-memory-infinity-2b.md (tools/export_memory.py)
MEMORY_HELP = (
    "Memory: an export holds each weight once; peak resident 1.17x the fp32 weights for --policy full, 1.25x "
    "with fastvar too (measured at Infinity-2B size; each further transformer graph adds a little). Plan for "
    "RAM of ~17 GiB for Infinity-2B and ~45 GiB for Infinity-8B (8.5 / 31.4 GiB of transformer and VAE plus "
    "the 4.6 GiB flan-t5-xl encoder; 8B extrapolated), and free disk of twice the artifact while it is written."
)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export per-scale static ONNX graphs (one shared weights file)", epilog=MEMORY_HELP
    )
    add_model_args(p)
    add_policy_args(p, many=True)
    p.add_argument("--batch", type=int, default=1, help="images per call (the graphs run 2 x batch rows with CFG)")
    p.add_argument("--out", type=Path, help="artifact directory (default: under $VARRT_CACHE, keyed by hash)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    g = p.add_argument_group("text-to-image (Infinity: --model infinity-2b / infinity-8b)")
    g.add_argument("--text-encoder", type=Path, help="the flan-t5-xl folder (config, weights, tokenizer)")
    g.add_argument("--pn", help="schedule size: 0.06M, 0.25M, 0.60M or 1M (1024 px, the default)")
    g.add_argument("--h-div-w", type=float, help="aspect ratio h/w: the nearest template is used (default 1)")
    g.add_argument("--text-length", type=int, help="padded prompt length in T5 tokens (default 64)")
    g.add_argument("--negative", action="store_true", help="also the text encoder shape for negative prompts")
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
    p.add_argument(
        "--precision", choices=["fp32", "fp16", "bf16", "int8", "fp8"], help="check the artifact holds this precision"
    )
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
