"""``varrt inspect``, ``varrt doctor``, ``varrt compare``: what an artifact holds, what the machine runs, and
how backends agree."""

from __future__ import annotations

import argparse
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import add_export_args, add_model_args, check_backend, make_engine, with_changes


def cmd_inspect(args: argparse.Namespace) -> int:
    from varrt.runtime.inspect import inspect_path

    con.console.print(inspect_path(args.path))
    return 0


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what an export artifact, engine directory or ONNX file holds")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_inspect)


def cmd_doctor(args: argparse.Namespace) -> int:
    from varrt.runtime.inspect import doctor

    con.console.print(doctor())
    return 0


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this machine can run: Python, torch, CUDA, GPU, ONNX Runtime, TensorRT")
    p.set_defaults(func=cmd_doctor)


def cmd_compare(args: argparse.Namespace) -> int:
    from varrt.export.artifact import read_manifest
    from varrt.runtime.inspect import compare_backends

    for backend in args.backends.split(","):
        check_backend(backend)
    manifest = read_manifest(args.artifact)
    args.precision = manifest.precision  # the torch reference computes at the artifact's precision
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
        compare_backends(
            args, lambda b: make_engine(with_changes(args, backend=b, artifact=args.artifact), 1, ("full",))
        )
    )
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="per-graph numerics of backends on an artifact (polygraphy's comparator)")
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
    add_model_args(p)
    add_export_args(p)
    p.set_defaults(func=cmd_compare)
