"""``varrt generate`` and ``varrt demo``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import (
    add_backend_args,
    add_backend_choice,
    add_export_args,
    add_model_args,
    add_policy_args,
    add_sampling_args,
    check_backend,
    make_engine,
    policy_specs,
    run_generation,
    sampling_config,
    set_threads,
)


def cmd_generate(args: argparse.Namespace) -> int:
    from varrt.runtime.cli.infinity import cmd_generate_infinity, is_infinity
    from varrt.runtime.images import save_images

    check_backend(args.backend)  # before any export or model loading
    if is_infinity(args):
        set_threads(args.threads)
        return cmd_generate_infinity(args)
    sampling = sampling_config(args)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if not args.classes and not args.batch:
        raise ValueError("give one or more --class ids (or --batch N for random classes)")
    specs = policy_specs(args)
    set_threads(args.threads)
    labels = args.classes or None
    engine = make_engine(args, batch=len(labels) if labels else args.batch, policies=specs)
    result = run_generation(engine, labels, args, specs[0], sampling, args.quiet)
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

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    check_backend(args.backend)
    demo = demo_model()
    for name in ("checkpoint", "vae", "random_weights", "artifact"):
        setattr(args, name, None)
    args.model, args.weights_seed, args.more_smooth = "demo", 0, False
    args.precision, args.opset = "float32", 20
    sampling = sampling_config(args)
    set_threads(args.threads)
    labels = [c for c in range(len(demo.classes)) for _ in range(args.per_class)]
    specs = (args.policy or "full",)
    engine = make_engine(args, batch=len(labels), policies=specs)
    con.info(
        f"demo: {len(demo.classes)} photographs x {args.per_class} samples, cfg {sampling.cfg}, "
        f"{engine.backend} backend"
    )
    result = run_generation(engine, labels, args, specs[0], sampling, quiet=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    labelled_grid(result.images, labels, demo.classes, columns=args.per_class).save(tmp)
    os.replace(tmp, out)
    con.info(f"wrote {out} ({len(labels)} images in {result.seconds['total']:.2f} s; rows: {', '.join(demo.classes)})")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a grid of images from the bundled demo model (ONNX Runtime on the CPU)")
    p.add_argument("--per-class", type=int, default=4, help="samples per photograph (default 4)")
    p.add_argument("--out", type=Path, default=Path("out/demo.png"))
    p.add_argument("--policy", default=None, help="acceleration policy (default full)")
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)
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
