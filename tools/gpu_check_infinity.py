"""The Infinity sections of the one-shot GPU check (``tools/gpu_check.py --infinity-model``).

torch-graph (:class:`~varrt.engines.torch_graph_engine.InfinityTorchGraphEngine`) against eager torch
on the same GPU, at Infinity-2B size in bf16 by default, random weights (perturbed so that blocks are
not near the identity) and a random T5 of flan-t5-xl's width (2 layers: no flan-t5-xl on the device;
T5 runs eagerly on both engines, so it does not take part in what is compared):

1. parity: the bits drawn at every scale, per precision x policy (full, fastvar) x negative prompt,
   on the first generation (eager warm-up + capture) and the second (replay); the captured graphs
   must not grow on the replay.
2. timings: per-scale wall time (synchronised), eager and torch-graph alternated in one run, warm-up
   and repeats, median and spread, peak memory of each engine.

On a CPU (``--dry-run``) the tests' tiny Infinity runs with the eager engine standing in for
torch-graph: it checks the script and the runtime's buffer reuse, not a GPU. Random weights: timings
and parity only; they say nothing about image fidelity.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from gpu_timing import side_by_side, table_lines

from varrt.engines.cuda_graphs import BufferPool
from varrt.engines.torch_engine import InfinityTorchEngine
from varrt.export.infinity_exporter import precision_model
from varrt.runtime.infinity_generate import generate_infinity
from varrt.runtime.policies.infinity import make_infinity_policy

PROMPTS = ("a red fox in the snow", "a small house by the sea at night")
NEGATIVE = "dark blurry"


@dataclass
class InfinityModels:
    model: object
    vae: object
    text_encoder: object
    schedule: object
    text_length: int


def infinity_models(name: str, pn: str) -> InfinityModels:
    """``tiny``: the tests' tiny Infinity on its 7-scale schedule; else a released size (random)."""
    from varrt.export.text_encoder import tiny_text_encoder

    if name == "tiny":
        from helpers import TINY_SCHEDULE, tiny_bsq_vae, tiny_infinity

        return InfinityModels(tiny_infinity(4), tiny_bsq_vae(), tiny_text_encoder(32), TINY_SCHEDULE, 16)
    from varrt.export.bsq_vae import BSQVAE
    from varrt.export.checkpoint import perturb
    from varrt.export.infinity import Infinity
    from varrt.export.infinity_config import BSQ_VAE_CONFIGS, INFINITY_CONFIGS, InfinitySchedule

    cfg = INFINITY_CONFIGS[name]
    model = perturb(Infinity(cfg).init_weights(0), 0.02, 1).eval().requires_grad_(False)
    vae = BSQVAE(BSQ_VAE_CONFIGS["infinity_vae_d56" if cfg.patchify else "infinity_vae_d32"]).eval()
    te = tiny_text_encoder(cfg.text_channels)
    return InfinityModels(model, vae, te, InfinitySchedule.for_ratio(1.0, pn), min(64, cfg.text_maxlen))


class StandIn(InfinityTorchEngine):
    """The dry run's torch-graph: the eager engine with persistent KV buffers (no CUDA graphs)."""

    def __init__(self, model, vae, text_encoder) -> None:
        super().__init__(model, vae, text_encoder)
        self.buffers = BufferPool(self.device)

    def allocate(self, spec, index: int = 0):
        return self.buffers.take(spec, index)

    def memory(self) -> dict:
        return {"buffers_bytes": self.buffers.bytes, "cuda_graphs": {"graphs": 0, "captured": 0}}


def engines(m: InfinityModels, precision: str, device, stand_in: bool) -> dict:
    """Eager torch and torch-graph over the same modules (one copy of the weights on the GPU)."""
    model, vae, te = precision_model(copy.deepcopy(m.model), precision), copy.deepcopy(m.vae), m.text_encoder
    model, vae = model.to(device), vae.to(device)
    te.model.to(device)
    if stand_in:
        graph = StandIn(model, vae, te)
    else:
        from varrt.engines.torch_graph_engine import InfinityTorchGraphEngine

        graph = InfinityTorchGraphEngine(model, vae, te)
    return {"torch": InfinityTorchEngine(model, vae, te), "torch-graph": graph}


def _same_bits(ref, got) -> dict:
    diff = [
        si
        for si, (a, b) in enumerate(zip(ref.bits, got.bits))
        if not ((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b)))
    ]
    return {"identical": not diff, "first_different_scale": diff[0] if diff else None}


def _generate(engine, m: InfinityModels, policy, negative, batch: int, seed: int = 0):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    return generate_infinity(
        engine,
        m.text_encoder,
        prompts,
        negative_prompt=negative,
        seed=seed,
        policy=policy,
        schedule=m.schedule,
        text_length=m.text_length,
    )


def parity(m: InfinityModels, args, device, stand_in: bool) -> list[dict]:
    out = []
    depth = m.model.cfg.depth
    for precision in args.infinity_precisions:
        pair = engines(m, precision, device, stand_in)
        for spec in args.infinity_policies:
            policy = make_infinity_policy(spec, m.schedule, depth)
            for negative in (None, NEGATIVE):
                ref = _generate(pair["torch"], m, policy, negative, args.infinity_batch)
                case = {"precision": precision, "policy": spec, "negative_prompt": negative is not None}
                for run in ("first", "replay"):
                    got = _generate(pair["torch-graph"], m, policy, negative, args.infinity_batch)
                    case[run] = _same_bits(ref, got)
                    case[f"{run}_graphs"] = pair["torch-graph"].memory()["cuda_graphs"]
                case["pile_up"] = case["first_graphs"] != case["replay_graphs"]  # the replay captured more
                out.append(case)
        del pair
    return out


def timings(m: InfinityModels, args, device, stand_in: bool, budget) -> list[dict]:
    out = []
    policy = make_infinity_policy("full", m.schedule, m.model.cfg.depth)
    for precision in args.infinity_precisions:
        if budget.left() < 30:
            out.append({"precision": precision, "skipped": "time budget"})
            continue
        pair = engines(m, precision, device, stand_in)
        generate_one = lambda engine, i: _generate(engine, m, policy, None, args.infinity_batch, seed=i)  # noqa: E731
        row = {"precision": precision, "batch": args.infinity_batch, "grid": list(m.schedule.grids[-1])}
        row.update(side_by_side(pair, generate_one, device, args.warmup, args.repeat))
        row["torch-graph memory"] = pair["torch-graph"].memory()
        out.append(row)
        del pair
    return out


def summary_lines(r: dict) -> list[str]:
    """The Infinity part of summary.md."""
    if "infinity_parity" not in r and "infinity_timings" not in r:
        return []
    lines = ["", f"## Infinity ({r.get('infinity_model')}, random weights, random 2-layer T5 of its width)", ""]
    lines += ["| precision | policy | negative prompt | first call | replay | replay captured more |"]
    lines += ["|---|---|---|---|---|---|"]
    fmt = lambda x: "identical" if x["identical"] else f"differs from scale {x['first_different_scale']}"  # noqa: E731
    for c in r.get("infinity_parity", []):
        neg = "yes" if c["negative_prompt"] else "no"
        row = f"| {c['precision']} | {c['policy']} | {neg} | {fmt(c['first'])} | {fmt(c['replay'])} | {c['pile_up']} |"
        lines.append(row)
    for t in r.get("infinity_timings", []):
        if "torch" not in t:
            lines.append(f"- {t}")
            continue
        grid = "x".join(map(str, t["grid"]))
        lines += ["", f"### {t['precision']}, batch {t['batch']}, {grid}: speed-up {t['speedup_total']:.2f}x", ""]
        lines += table_lines(t)
    return lines
