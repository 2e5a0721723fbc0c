"""ToProVAR's layer scores from a model: ``python tools/toprovar_layers.py --seeds 8``.

The paper weights each layer's pruning by a layer score R(l, s) (from the layer's "semantic
scope"; its values and the SVD analysis behind them are not published). This script measures a
substitute on a model, offline (a static graph cannot depend on one image): it runs the full plan
with an entropy probe at the cut-off scale D over samples of every class, takes every block's mean
attention entropy normalised by the log of the keys each token sees (1 = uniform attention), and
scales it so that the pruned blocks (after ``entropy_block``) average 1. Blocks with more diffuse
attention get R > 1 (pruned more), focused ones R < 1. It prints the knob to pass:
``--policy toprovar:layer_score=...``; check its fidelity with ``varrt eval``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import torch

from varrt.engines.torch_engine import TorchEngine
from varrt.export.checkpoint import load_models
from varrt.runtime.demo import demo_model
from varrt.runtime.generate import generate
from varrt.runtime.plan import Plan
from varrt.runtime.policies import ScaleState, StaticPolicy
from varrt.runtime.sampling import SamplingConfig


class EntropyProbe(StaticPolicy):
    """The full plan with the probe graph at ``scale``: records every block's entropy there."""

    def __init__(self, plan: Plan, scale: int) -> None:
        super().__init__(replace(plan, probe_scale=scale))
        self.scale, self.recorded = scale, []

    def after_scale(self, state: ScaleState) -> None:
        if state.si == self.scale:
            g = state.groups[0]
            self.recorded.append(g.entropy[: g.b].mean(-1))  # (b, depth): the conditional rows
        return None


def layer_scores(entropy: torch.Tensor, keys: int, entropy_block: int) -> torch.Tensor:
    """(samples, depth) entropies -> R per block: normalised mean entropy, the pruned blocks averaging 1."""
    score = entropy.mean(0) / math.log(keys)
    return score / score[entropy_block + 1 :].mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="VAR checkpoint (default: the bundled demo model)")
    p.add_argument("--vae", help="VQVAE checkpoint")
    p.add_argument("--seeds", type=int, default=8, help="samples per class")
    p.add_argument("--classes", type=int, default=10, help="the first N classes")
    p.add_argument("--cutoff", type=int, help="ToProVAR's cut-off scale D (default SN - 2)")
    p.add_argument("--entropy-block", type=int, default=0, help="ToProVAR's entropy block (default 0)")
    args = p.parse_args()
    demo = demo_model()
    var, vqvae = load_models(args.checkpoint or demo.var, args.vae or demo.vqvae)
    sched = var.cfg.schedule
    scale = sched.num_scales - 2 if args.cutoff is None else args.cutoff
    probe = EntropyProbe(Plan.full(sched), scale)
    sampling = SamplingConfig(**demo.sampling) if args.checkpoint is None else SamplingConfig()
    engine = TorchEngine(var, vqvae)
    for c in range(args.classes):
        generate(engine, [c] * args.seeds, seed=c, sampling=sampling, policy=probe)
    keys = sched.begin_ends[scale][1]
    scores = layer_scores(torch.cat(probe.recorded), keys, args.entropy_block)
    print(f"scale {scale}: per block, mean attention entropy / log({keys} keys), relative to the pruned blocks' mean")
    for b, r in enumerate(scores.tolist()):
        print(f"  block {b:3d}: R = {r:.3f}" + ("  (runs every token)" if b <= args.entropy_block else ""))
    knob = "/".join(f"{r:.2f}" for r in scores.tolist())
    print(f"--policy toprovar:entropy_block={args.entropy_block},layer_score={knob}")


if __name__ == "__main__":
    main()
