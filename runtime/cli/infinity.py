"""``varrt generate --model infinity-2b --prompt ...``: the text-to-image half of the command line.

Backends: ``torch`` (eager), ``torch-graph`` (the eager modules replayed from CUDA graphs; both
compute at ``--precision`` as an export of it does), ``ort`` (export artifact, reused by hash; the
default) and ``trt`` (the same artifact). The tokenizer always comes from ``--text-encoder DIR``
(the flan-t5-xl folder); the T5 encoder itself runs on the chosen backend.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from varrt.runtime import console as con
from varrt.runtime.cli.common import pipeline_for, run_generation


def add_infinity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text-to-image (Infinity: --model infinity-2b / infinity-8b)")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    g.add_argument("--negative-prompt", help="replaces the learned unconditional text for every prompt")
    g.add_argument("--text-encoder", type=Path, help="the flan-t5-xl folder (config, weights, tokenizer)")
    g.add_argument("--tau", type=float, help="sampling temperature (default 1.0)")
    g.add_argument(
        "--h-div-w", type=float, help="aspect ratio h/w: the nearest template is used (default 1; --artifact: its own)"
    )
    g.add_argument("--pn", help="schedule size: 0.06M, 0.25M, 0.60M or 1M (1024 px, the default; --artifact: its own)")
    g.add_argument(
        "--text-length",
        type=int,
        help="padded prompt length in T5 tokens (default: the smallest of 64/128/256/512 that holds the prompts)",
    )


def cmd_generate_infinity(args: argparse.Namespace) -> int:
    from varrt.export.infinity_config import INFINITY_CONFIGS, InfinitySchedule
    from varrt.export.text_encoder import load_text_encoder, text_bucket
    from varrt.runtime.images import save_images
    from varrt.runtime.pipeline import PromptShape
    from varrt.runtime.policies.infinity import make_infinity_policy

    if not args.prompt:
        raise ValueError('give one or more --prompt "..." for a text-to-image model')
    if args.text_encoder is None:
        raise ValueError("Infinity needs --text-encoder DIR: the flan-t5-xl folder (weights and tokenizer)")
    if args.classes or args.batch:
        raise ValueError("a text-to-image model takes --prompt, not --class / --batch")
    if args.h_div_w is not None and not args.h_div_w > 0:
        raise ValueError(f"--h-div-w must be > 0, got {args.h_div_w}")
    schedule = InfinitySchedule.for_ratio(args.h_div_w or 1.0, args.pn or "1M")
    spec = args.plan or args.policy or "full"
    if args.model in INFINITY_CONFIGS:  # a bad policy spec fails before any weights are loaded
        make_infinity_policy(spec, schedule, INFINITY_CONFIGS[args.model].depth)
    tokenizer = load_text_encoder(args.text_encoder, load_model=False)
    texts = args.prompt + ([args.negative_prompt] if args.negative_prompt else [])
    _, mask = tokenizer.tokenize(texts, 512)
    length = args.text_length or text_bucket(mask.sum(1))
    if int(mask.sum(1).max()) > length:
        raise ValueError(f"a prompt has {int(mask.sum(1).max())} T5 tokens, more than --text-length {length}")
    shape = PromptShape(schedule, length, bool(args.negative_prompt))
    pipe = pipeline_for(args, batch=len(args.prompt), policies=(spec,), prompts=shape)
    if (args.h_div_w is not None or args.pn is not None) and pipe.schedule != schedule:
        raise ValueError(
            f"{args.artifact} was exported for the schedule {list(pipe.schedule.grids)[-1]} (last grid), not the "
            "--h-div-w / --pn given; drop them to use the artifact's, or export for them"
        )
    result = run_generation(pipe, args, spec, args.quiet, prompts=args.prompt, negative_prompt=args.negative_prompt)
    paths = save_images(result.images, args.out)
    if not args.quiet:
        con.info(f"wrote {len(paths)} image(s) to {args.out}/")
    return 0
