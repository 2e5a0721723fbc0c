"""``varrt inspect``, ``varrt doctor``, ``varrt compare``: what an artifact holds, what the machine runs, and
how backends agree."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import add_export_args, add_model_args, weights_of


def cmd_inspect(args: argparse.Namespace) -> int:
    from varrt.runtime.inspect import describe_path, inspect_path

    if args.json:
        con.print_json(describe_path(args.path, verify=args.verify))
    else:
        con.result(inspect_path(args.path, verify=args.verify))
    return 0


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what an export artifact, engine directory or ONNX file holds")
    p.add_argument("path", type=Path)
    p.add_argument("--verify", action="store_true", help="re-read every file of an artifact (ignore the hash memory)")
    p.add_argument("--json", action="store_true", help="print it as JSON (stdout) instead of tables")
    p.set_defaults(func=cmd_inspect)


def cmd_doctor(args: argparse.Namespace) -> int:
    from varrt.runtime.inspect import doctor, doctor_info

    if args.json:
        con.print_json(doctor_info())
    else:
        con.result(doctor())
    return 0


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this machine can run: Python, torch, CUDA, GPU, ONNX Runtime, TensorRT")
    p.add_argument("--json", action="store_true", help="print it as JSON (stdout) instead of a table")
    p.set_defaults(func=cmd_doctor)


def reference_weights(args: argparse.Namespace, family: str, source: dict):
    """The torch reference's weights: those the arguments name, else the ones the artifact was
    exported from (its manifest's ``source``; None when they are gone). Infinity's T5 folder: the
    one given, else the one it was exported with."""
    from varrt.runtime.weights import Weights

    named = args.checkpoint or args.vae or args.random_weights
    weights = weights_of(args, family) if named else Weights.of_source(source, family)
    if weights is not None and family == "infinity":
        exported = source.get("text_encoder", {}).get("path")
        te = args.text_encoder or weights.text_encoder or (Path(exported) if exported else None)
        weights = replace(weights, family="infinity", text_encoder=te)
    return weights


def cmd_compare(args: argparse.Namespace) -> int:
    from varrt.export.artifact import read_manifest
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.inspect import compare_backends
    from varrt.runtime.pipeline import ExportOptions, artifact_engine, build_engine, check_backend

    for backend in args.backends.split(","):
        check_backend(backend)
    manifest = read_manifest(args.artifact)
    weights = reference_weights(args, manifest.family, manifest.source)

    def engine_for(backend: str):
        if backend in ("torch", "torch-graph"):
            if weights is None:
                raise ValueError(
                    f"the checkpoints {args.artifact} was exported from are gone; give them (--checkpoint, --vae) "
                    "for the torch reference"
                )
            # the torch reference computes at the artifact's precision
            export = ExportOptions(config=ExportConfig(precision=manifest.precision))
            return build_engine(weights, backend, export=export, compile=False)
        return artifact_engine(args.artifact, backend, args.providers.split(","), args.threads, tf32=args.tf32)

    result, ok = compare_backends(args, engine_for)
    con.result(result)
    return 0 if ok else 1  # 1: a graph failed its comparison (2 stays a usage error)


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="per-graph numerics of backends on an artifact (polygraphy's comparator; exit 1: a failure)"
    )
    p.add_argument("artifact", type=Path)
    p.add_argument("--backends", default="torch,ort", help="comma-separated; the first is the reference")
    p.add_argument("--graphs", help="comma-separated graph names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--providers", default="CPUExecutionProvider", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="trt: build with TF32 for fp32 math (off by default here: fp32 parity with torch)",
    )
    p.add_argument(
        "--text-encoder", type=Path, help="Infinity: the flan-t5-xl folder (default: the one it was exported with)"
    )
    add_model_args(p)
    add_export_args(p)
    p.set_defaults(func=cmd_compare)
