"""Argument groups and steps that several verbs share: model files, policies, export, the pipeline.

The verbs translate arguments into the library's terms (:class:`~varrt.runtime.weights.Weights`,
:class:`~varrt.runtime.pipeline.Pipeline`) and print; they never assemble engines themselves."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import torch

from varrt.runtime import console as con
from varrt.runtime.pipeline import BACKENDS as BACKENDS


# ------------------------------------------------------------------------------------------ model
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the bundled demo model)")
    g.add_argument("--checkpoint", type=Path, help="VAR checkpoint (.pth or .safetensors)")
    g.add_argument("--vae", type=Path, help="VQVAE checkpoint (vae_ch160v4096z32.pth or .safetensors)")
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="no checkpoint: a released architecture with random weights (smoke runs; images are noise)",
    )
    g.add_argument(
        "--model",
        default=None,
        help="architecture for --random-weights (var-d16, the default, ... var-d36); infinity-2b / infinity-8b "
        "select the text-to-image family (with --checkpoint, --vae, --text-encoder, --prompt)",
    )
    g.add_argument("--weights-seed", type=int, default=0, help="seed of the random weights")


def is_infinity(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "prompt", None)) or str(getattr(args, "model", None) or "").startswith("infinity")


def var_only(args: argparse.Namespace, verb: str) -> None:
    if is_infinity(args):
        raise ValueError(
            f"`varrt {verb}` covers VAR models so far (Infinity exports and runs through `varrt generate --prompt`)"
        )


def weights_of(args: argparse.Namespace, family: str | None = None):
    """The weights the arguments name: --checkpoint/--vae, --random-weights --model, or the demo model
    (``family``: known from elsewhere, e.g. an artifact; by default told by the arguments)."""
    from varrt.runtime.weights import Weights

    infinity = family == "infinity" if family else is_infinity(args)
    text_encoder = getattr(args, "text_encoder", None) if infinity else None
    if args.model and not infinity and not args.random_weights:
        runs = "the checkpoint's own architecture" if args.checkpoint else "the bundled demo model"
        raise ValueError(
            f"--model {args.model} names an architecture for --random-weights; without it {runs} runs: "
            "add --random-weights, or drop --model"
        )
    if args.random_weights:
        if args.checkpoint or args.vae:
            raise ValueError("--random-weights and --checkpoint/--vae exclude each other")
        return Weights.random_weights(args.model or "var-d16", args.weights_seed, text_encoder)
    if args.checkpoint or args.vae:
        if not args.checkpoint or not args.vae:
            raise ValueError("give both --checkpoint and --vae (or neither, for the bundled demo model)")
        return Weights.files(args.checkpoint, args.vae, text_encoder)
    if infinity:
        raise ValueError(
            "Infinity needs --checkpoint (infinity_2b_reg.pth or the 8B shard folder) and --vae "
            "(infinity_vae_d32_reg.pth / infinity_vae_d56_f8_14_patchify.pth), or --random-weights"
        )
    return Weights.demo_model()


# ------------------------------------------------------------------------------------------ policies
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


def check_policies(specs: tuple[str, ...], family: str, cfg=None) -> None:
    """Bad policy specs and plan files fail before anything is loaded: fully against ``cfg`` when
    the architecture is known, else the plan files' fields and the policy names."""
    from varrt.runtime.plan import Plan, PlanError
    from varrt.runtime.policies import make_policy, parse_spec, registry

    for spec in specs:
        if cfg is not None:
            make_policy(spec, cfg)
            continue
        for part in spec.split("+"):
            if Path(part).suffix in (".json", ".toml"):
                Plan.load(part)
                continue
            name, _ = parse_spec(part)
            if name != "full" and name not in registry(family):
                raise PlanError(
                    f"unknown policy {name!r}; known: full, {', '.join(registry(family))}, A+B, or a plan file"
                )


# ------------------------------------------------------------------------------------------ sampling
def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the official 4 / 900 / 0.95, or the demo model's own)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cfg", type=float, help="guidance at the last scale (ramps from 0)")
    g.add_argument("--top-k", type=int, help="0 switches top-k off")
    g.add_argument("--top-p", type=float, help="1.0 switches top-p off")
    g.add_argument("--more-smooth", action="store_true", help="official Gumbel-softmax smoothing (visualisation)")


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line (None: the pipeline's default)."""
    names = ("cfg", "top_k", "top_p", "tau")
    given = {k: getattr(args, k, None) for k in names}
    if getattr(args, "more_smooth", False):
        given["more_smooth"] = True
    return given


# ------------------------------------------------------------------------------------------ backend
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


def set_threads(n: int | None) -> None:
    if n is not None and n < 1:
        raise ValueError(f"--threads must be >= 1 (or left out for all {os.cpu_count()} cores), got {n}")
    torch.set_num_threads(n or os.cpu_count() or 1)


def preflight(args: argparse.Namespace, one_policy: bool = False) -> None:
    """The cheap checks of a generating verb, before anything is loaded or exported: numbers in
    range, flags that go together, files where they are said to be, a backend this machine runs."""
    from varrt.runtime.pipeline import check_backend, sampling_config

    set_threads(getattr(args, "threads", None))
    if getattr(args, "seed", 0) < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if one_policy and getattr(args, "policy", None) and getattr(args, "plan", None):
        raise ValueError(
            "give --policy or --plan, not both: a plan file is a policy (one policy per generation; "
            "`varrt eval` and `varrt bench` compare several)"
        )
    family = "infinity" if is_infinity(args) else "var"
    if getattr(args, "artifact", None):
        named = [f for f in ("checkpoint", "vae", "random_weights", "model") if getattr(args, f, None)]
        if named and family == "var":
            raise ValueError(
                "--artifact runs the weights it was exported from; drop "
                + ", ".join("--" + n.replace("_", "-") for n in named)
            )
        if args.backend not in ("ort", "trt"):
            raise ValueError(f"--artifact runs on --backend ort or trt, not {args.backend}")
        defaults = {}
        weights = None
    else:
        weights = weights_of(args).check() if family == "var" or getattr(args, "text_encoder", None) else None
        defaults = weights.sampling_defaults if weights else {}
    check_policies(policy_specs(args), family, weights.known_config() if weights else None)
    from varrt.runtime.weights import INFINITY_SAMPLING, OFFICIAL_SAMPLING

    base = OFFICIAL_SAMPLING if family == "var" else INFINITY_SAMPLING
    sampling_config(family, {**base, **defaults}, sampling_overrides(args))
    providers = getattr(args, "providers", "CPUExecutionProvider").split(",")
    check_backend(getattr(args, "backend", "ort"), family, providers)


# ------------------------------------------------------------------------------------------ export
def add_export_args(p: argparse.ArgumentParser) -> None:
    from varrt.export.quantize import DECODER_GATE, DECODER_MODES

    g = p.add_argument_group("export")
    g.add_argument(
        "--precision",
        default="float32",
        help="float32 (default), float16, bfloat16: matmul/KV precision; int8 (Q/DQ for TensorRT; ONNX Runtime "
        "runs it, slowly on CPUs without VNNI), int8-cpu (ONNX Runtime's dynamic form: the fast one on the CPU), "
        "fp8 (TensorRT, E4M3 Q/DQ): quantized transformer matmuls; norms, softmax, logits stay float32",
    )
    g.add_argument(
        "--calibrate",
        type=int,
        help="int8 / fp8 (and int8-cpu's int8 decoder): calibration generations per exported policy (default 4; "
        "seeds 0..N-1, consecutive classes)",
    )
    g.add_argument(
        "--decoder-precision",
        choices=DECODER_MODES,
        default="auto",
        help=f"int8 / int8-cpu: the decoder in int8 only if its images keep mean SSIM >= {DECODER_GATE} vs fp32 on "
        "held-out generations (auto, the default; random weights: fp32), int8 ungated, or fp32",
    )
    g.add_argument("--opset", type=int, default=20, help="ONNX opset (18-20)")
    g.add_argument("--force", action="store_true", help="replace an artifact that holds a different export")
    g.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs torch parity check")


def export_options(args: argparse.Namespace, out: Path | None = None):
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.pipeline import ExportOptions

    config = ExportConfig(
        precision=getattr(args, "precision", "float32"),
        opset=getattr(args, "opset", 20),
        calibrate=getattr(args, "calibrate", None),
        decoder=getattr(args, "decoder_precision", "auto"),
    )
    return ExportOptions(
        config=config, out=out, force=getattr(args, "force", False), validate=not getattr(args, "no_validate", False)
    )


def status(what: str, args: argparse.Namespace):
    """The one-line status of a long step, silent under --quiet."""
    if getattr(args, "quiet", False):
        return contextlib.nullcontext(lambda _m: None)
    return con.status(what)


def pipeline_for(args: argparse.Namespace, batch: int, policies: tuple[str, ...], prompts=None):
    """The pipeline the arguments describe: --artifact as it is, or the weights on --backend
    (ort / trt export once for ``policies`` x ``batch``, reused from the cache by hash)."""
    from varrt.runtime.pipeline import Pipeline

    providers = getattr(args, "providers", "CPUExecutionProvider").split(",")
    if getattr(args, "artifact", None):
        with status("load", args) as say:
            return Pipeline.from_artifact(
                args.artifact,
                args.backend,
                providers=providers,
                threads=args.threads,
                text_encoder=getattr(args, "text_encoder", None),
                tf32=getattr(args, "tf32", True),
                say=say,
            )
    weights = weights_of(args)
    if weights.random:
        con.warn(
            f"--random-weights: {weights.random} with random weights; the images are noise "
            "(use it for smoke runs and timing only)"
        )
    with status("export", args) as say:
        return Pipeline.from_weights(
            weights,
            args.backend,
            policies=policies,
            batch=batch,
            export=export_options(args),
            prompts=prompts,
            providers=providers,
            threads=args.threads,
            compile=getattr(args, "compile", False),
            tf32=getattr(args, "tf32", True),
            say=say,
        )


# ------------------------------------------------------------------------------------------ running
def timing_table(result, pipe) -> None:
    rows = []
    for si, s in enumerate(result.scale_seconds):
        h, w = pipe.grid(si)
        rows.append([f"scale {si} ({h}x{w})", f"{s * 1e3:.1f}"])
    #: the scales' time is "transformer" in Generation.seconds; sampling is a part of it
    label = {"transformer": "scales (all)", "sampling": "  of which sampling"}
    rows += [[label.get(k, k), f"{v * 1e3:.1f}"] for k, v in result.seconds.items()]
    con.result(con.table(f"timing ({pipe.backend}, batch {result.images.shape[0]})", ["stage", "ms"], rows))


def run_generation(pipe, args: argparse.Namespace, policy_spec: str, quiet: bool, **inputs):
    """One generation with a progress bar per scale, then the timing table and the policy's decisions."""
    policy = pipe.policy(policy_spec)
    sampling = pipe.sampling(sampling_overrides(args))
    if not quiet:
        settings = ", ".join(f"{k} {v}" for k, v in vars(sampling).items() if k != "more_smooth" or v)
        con.info(f"sampling: {settings} (defaults: {pipe.sampling_origin})")
    label = f"{pipe.label} [{pipe.backend}, {policy.name}]"
    with con.progress(pipe.num_scales, label, enabled=not quiet) as step:
        result = pipe.generate(
            seed=args.seed,
            policy=policy,
            sampling=sampling,
            on_scale=lambda si, n, s: step(f"scale {si} ({'x'.join(map(str, pipe.grid(si)))}) {s:.2f}s"),
            **inputs,
        )
    if not quiet:
        timing_table(result, pipe)
        if result.decisions:
            con.info(
                f"{policy.name}: " + "; ".join(f"after scale {d['scale']}: {d['plans']}" for d in result.decisions)
            )
    return result


def with_changes(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})
