"""``varrt generate --model infinity-2b --prompt ...``: the text-to-image half of the command line.

Backends: ``torch`` (eager), ``ort`` (export artifact, reused by hash; the default) and ``trt``
(the same artifact; never executed so far, no GPU was available); ``torch-graph`` is
VAR-only for now. The tokenizer always comes from ``--text-encoder DIR`` (the flan-t5-xl folder);
the T5 encoder itself runs on the chosen backend.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from varrt.runtime import console as con

#: ``tools/run_infinity.py``'s defaults (``scripts/infer.sh`` uses cfg 4, tau 0.5)
INFINITY_SAMPLING = {"cfg": 3.0, "tau": 1.0, "top_k": 900, "top_p": 0.97}


def add_infinity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text-to-image (Infinity: --model infinity-2b / infinity-8b)")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    g.add_argument("--negative-prompt", help="replaces the learned unconditional text for every prompt")
    g.add_argument("--text-encoder", type=Path, help="the flan-t5-xl folder (config, weights, tokenizer)")
    g.add_argument("--tau", type=float, help="sampling temperature (default 1.0)")
    g.add_argument("--h-div-w", type=float, default=1.0, help="aspect ratio h/w: the nearest template is used")
    g.add_argument("--pn", default="1M", help="schedule size: 0.06M, 0.25M, 0.60M or 1M (1024 px, default)")
    g.add_argument(
        "--text-length",
        type=int,
        help="padded prompt length in T5 tokens (default: the smallest of 64/128/256/512 that holds the prompts)",
    )


def is_infinity(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "prompt", None)) or str(getattr(args, "model", "")).startswith("infinity")


def _load_models(args: argparse.Namespace):
    from varrt.export.bsq_vae import BSQVAE
    from varrt.export.infinity import Infinity
    from varrt.export.infinity_checkpoint import load_bsq_vae, load_infinity
    from varrt.export.infinity_config import BSQ_VAE_CONFIGS, INFINITY_CONFIGS
    from varrt.export.text_encoder import load_text_encoder

    text_encoder = load_text_encoder(args.text_encoder)
    if args.random_weights:
        if args.model not in INFINITY_CONFIGS:
            raise ValueError(f"--model {args.model!r}: Infinity sizes are {sorted(INFINITY_CONFIGS)}")
        cfg = INFINITY_CONFIGS[args.model]
        model = Infinity(cfg).init_weights(args.weights_seed).eval().requires_grad_(False)
        vae_name = "infinity_vae_d56" if cfg.patchify else "infinity_vae_d32"
        vae = BSQVAE(BSQ_VAE_CONFIGS[vae_name]).eval().requires_grad_(False)
    else:
        if args.checkpoint is None or args.vae is None:
            raise ValueError(
                "Infinity needs --checkpoint (infinity_2b_reg.pth or the 8B shard folder) and --vae "
                "(infinity_vae_d32_reg.pth / infinity_vae_d56_f8_14_patchify.pth), or --random-weights"
            )
        model, vae = load_infinity(args.checkpoint), load_bsq_vae(args.vae)
    if text_encoder.channels != model.cfg.text_channels:
        raise ValueError(
            f"the text encoder in {args.text_encoder} has d_model {text_encoder.channels}, the Infinity model reads "
            f"{model.cfg.text_channels}-channel text (flan-t5-xl)"
        )
    if vae.cfg.code_bits != model.cfg.code_bits:
        raise ValueError(
            f"the VAE decodes {vae.cfg.code_bits}-bit codes, the transformer samples {model.cfg.code_bits}-bit codes; "
            "Infinity-2B goes with infinity_vae_d32, Infinity-8B with the d56 patchify VAE"
        )
    return model, vae, text_encoder


def _source(args: argparse.Namespace) -> dict:
    from varrt.runtime.infinity_artifacts import infinity_source

    if args.random_weights:
        return {"random_weights": {"model": args.model, "seed": args.weights_seed}, **{
            k: v for k, v in infinity_source(args.text_encoder, args.text_encoder, args.text_encoder).items()
            if k == "text_encoder"
        }}  # fmt: skip
    return infinity_source(args.checkpoint, args.vae, args.text_encoder)


def cmd_generate_infinity(args: argparse.Namespace) -> int:
    from varrt.export.infinity_config import INFINITY_CONFIGS, InfinitySchedule
    from varrt.export.text_encoder import load_text_encoder, text_bucket
    from varrt.runtime.bitwise import BitwiseSampling
    from varrt.runtime.images import save_images
    from varrt.runtime.infinity_generate import generate_infinity
    from varrt.runtime.policies.infinity import make_infinity_policy

    if not args.prompt:
        raise ValueError('give one or more --prompt "..." for a text-to-image model')
    if args.text_encoder is None:
        raise ValueError("Infinity needs --text-encoder DIR: the flan-t5-xl folder (weights and tokenizer)")
    pick = lambda k: getattr(args, k) if getattr(args, k, None) is not None else INFINITY_SAMPLING[k]  # noqa: E731
    sampling = BitwiseSampling(cfg=pick("cfg"), tau=pick("tau"), top_k=pick("top_k"), top_p=pick("top_p"))
    schedule = InfinitySchedule.for_ratio(args.h_div_w, args.pn)
    spec = args.plan or args.policy or "full"
    if args.model in INFINITY_CONFIGS:  # a bad policy spec fails before any weights are loaded
        make_infinity_policy(spec, schedule, INFINITY_CONFIGS[args.model].depth)
    tokenizer = load_text_encoder(args.text_encoder, load_model=False)
    texts = args.prompt + ([args.negative_prompt] if args.negative_prompt else [])
    _, mask = tokenizer.tokenize(texts, 512)
    length = args.text_length or text_bucket(mask.sum(1))
    if int(mask.sum(1).max()) > length:
        raise ValueError(f"a prompt has {int(mask.sum(1).max())} T5 tokens, more than --text-length {length}")
    engine = _engine(args, len(args.prompt), length, spec, schedule)
    policy = make_infinity_policy(spec, schedule, engine.config.depth)
    name = engine.config.name or "infinity"
    with con.progress(schedule.num_scales, f"{name} [{engine.backend}, {policy.name}]", enabled=not args.quiet) as step:
        result = generate_infinity(
            engine,
            tokenizer,
            args.prompt,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            sampling=sampling,
            policy=policy,
            schedule=schedule,
            text_length=length,
            on_scale=lambda si, n, s: step(f"scale {si} ({'x'.join(map(str, schedule.grids[si]))}) {s:.2f}s"),
        )
    paths = save_images(result.images, args.out)
    if not args.quiet:
        rows = [
            [f"scale {si} ({h}x{w})", f"{s * 1e3:.1f}"]
            for si, ((h, w), s) in enumerate(zip(schedule.grids, result.scale_seconds))
        ]
        rows += [[k, f"{v * 1e3:.1f}"] for k, v in result.seconds.items()]
        con.console.print(con.table(f"timing ({engine.backend}, batch {len(args.prompt)})", ["stage", "ms"], rows))
        if result.decisions:
            con.info(
                f"{policy.name}: " + "; ".join(f"after scale {d['scale']}: {d['plans']}" for d in result.decisions)
            )
        con.info(f"wrote {len(paths)} image(s) to {args.out}/")
    return 0


def _engine(args: argparse.Namespace, batch: int, length: int, spec: str, schedule):
    if args.backend == "torch":
        from varrt.engines.torch_engine import InfinityTorchEngine

        return InfinityTorchEngine(*_load_models(args))
    if args.backend not in ("ort", "trt"):
        raise ValueError(f"--backend {args.backend}: Infinity runs on torch, ort and trt")
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.infinity_artifacts import InfinityExportRequest, ensure_infinity_artifact

    artifact = args.artifact
    if artifact is None:
        request = InfinityExportRequest(
            source=_source(args),
            policies=(spec,),
            batch=batch,
            schedule=schedule,
            text_length=length,
            negative=bool(args.negative_prompt),
            config=ExportConfig(precision=getattr(args, "precision", "float32")),
        )
        with con.status("export") as say:
            artifact = ensure_infinity_artifact(request, lambda: _load_models(args), force=args.force, say=say)
    if args.backend == "trt":
        from varrt.engines.tensorrt_engine import TrtEngine

        with con.status("tensorrt") as say:
            return TrtEngine(artifact, say=say)
    from varrt.engines.ort_engine import OrtEngine

    torch.set_num_threads(args.threads or torch.get_num_threads())
    return OrtEngine(artifact, providers=args.providers.split(","), threads=args.threads)
