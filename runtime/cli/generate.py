"""``varrt generate`` and ``varrt demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import (
    add_backend_args,
    add_backend_choice,
    add_export_args,
    add_model_args,
    add_policy_args,
    add_sampling_args,
    is_infinity,
    pipeline_for,
    policy_specs,
    preflight,
    run_generation,
    sampling_overrides,
)


def cmd_generate(args: argparse.Namespace) -> int:
    from varrt.runtime.cli.infinity import cmd_generate_infinity
    from varrt.runtime.images import save_images
    from varrt.runtime.outputs import check_dir

    preflight(args, one_policy=True)
    check_dir(args.out, "--out")
    if is_infinity(args):
        return cmd_generate_infinity(args)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if not args.classes and not args.batch:
        raise ValueError("give one or more --class ids (or --batch N for random classes)")
    if args.classes and args.batch:
        raise ValueError("give --class ids or --batch N (random classes), not both")
    specs = policy_specs(args)
    labels = args.classes or None
    pipe = pipeline_for(args, batch=len(labels) if labels else args.batch, policies=specs)
    result = run_generation(pipe, args, specs[0], args.quiet, labels=labels, batch=args.batch)
    paths = save_images(result.images, args.out)
    if not args.quiet:
        con.info(f"wrote {len(paths)} image(s) to {args.out}/ (classes {result.labels.tolist()})")
    return 0


def add_generate(sub: argparse._SubParsersAction) -> None:
    from varrt.runtime.cli.infinity import add_infinity_args

    p = sub.add_parser("generate", help="generate images: class-conditional (VAR) or from prompts (Infinity)")
    add_model_args(p)
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
    add_sampling_args(p)
    add_policy_args(p, many=False)
    add_backend_args(p)
    add_export_args(p)
    p.set_defaults(func=cmd_generate)


# ------------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from varrt.runtime.demo import demo_model, labelled_grid
    from varrt.runtime.outputs import check_file, write_file

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    for name in ("checkpoint", "vae", "random_weights", "artifact", "model"):
        setattr(args, name, None)
    preflight(args, one_policy=True)
    out = check_file(args.out, "--out", suffixes=(".png",))
    specs = policy_specs(args)
    labels = [c for c in range(len(demo_model().classes)) for _ in range(args.per_class)]
    pipe = pipeline_for(args, batch=len(labels), policies=specs)
    sampling = pipe.sampling(sampling_overrides(args))
    con.info(
        f"demo: {len(pipe.classes)} classes x {args.per_class} samples, cfg {sampling.cfg}, {pipe.backend} backend"
    )
    result = run_generation(pipe, args, specs[0], quiet=False, labels=labels)
    grid = labelled_grid(result.images, labels, pipe.classes, columns=args.per_class)
    write_file(out, lambda tmp: grid.save(tmp, format="PNG"))
    names = ", ".join(pipe.classes)
    con.info(f"wrote {out} ({len(labels)} images in {result.seconds['total']:.2f} s; rows: {names})")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a grid of images from the bundled demo model (ONNX Runtime on the CPU)")
    p.add_argument("--per-class", type=int, default=4, help="samples per class (default 4)")
    p.add_argument("--out", type=Path, default=Path("out/demo.png"))
    p.add_argument("--policy", default=None, help="acceleration policy (default full)")
    p.add_argument("--plan", default=None, help="a plan file (.json / .toml) instead of --policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, help="guidance (default: the demo model's)")
    p.add_argument("--top-k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--top-p", type=float, help=argparse.SUPPRESS)
    add_backend_choice(p)
    p.add_argument("--providers", default="CPUExecutionProvider", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
