"""ToProVAR's layer analysis: ``python tools/toprovar_layers.py --seeds 8 --count 2``.

Runs the ToProVAR probe (the attention entropy of every block at the probe scale) over a few
samples of every class and ranks the blocks by their mean entropy, normalised by the log of the
keys each token sees (1 = uniform attention). The most diffuse blocks are the candidates the
policy skips at late scales; the script prints the knob to pass: ``--policy toprovar:skip=i/j``.
A static layer-set graph cannot depend on one image, so the choice is made here, offline, once
per model; check its fidelity with ``varrt eval --policy toprovar --policy toprovar:skip=...``.
"""

from __future__ import annotations

import argparse
import math

import torch

from varrt.engines.torch_engine import TorchEngine
from varrt.export.checkpoint import load_models
from varrt.runtime.demo import demo_model
from varrt.runtime.generate import generate
from varrt.runtime.plan import Plan
from varrt.runtime.policies import ScaleState
from varrt.runtime.policies.toprovar import ToProVarPolicy
from varrt.runtime.sampling import SamplingConfig


class EntropyRecorder(ToProVarPolicy):
    """ToProVAR's own selection, recording the probe's per-block entropy on the way."""

    def __init__(self, cfg, **knobs) -> None:
        super().__init__(cfg, **knobs)
        self.recorded: list[torch.Tensor] = []

    def select(self, si: int, plan: Plan, state: ScaleState) -> torch.Tensor:
        g = state.groups[0]
        if si == self.options["cutoff"]:
            self.recorded.append(g.entropy[: state.x.shape[0]].mean(-1))  # (b, depth): conditional rows
        return super().select(si, plan, state)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="VAR checkpoint (default: the bundled demo model)")
    p.add_argument("--vae", help="VQVAE checkpoint")
    p.add_argument("--seeds", type=int, default=8, help="samples per class")
    p.add_argument("--classes", type=int, default=10, help="the first N classes")
    p.add_argument("--count", type=int, default=2, help="blocks to name")
    p.add_argument("--cutoff", type=int, help="ToProVAR's cut-off scale (default SN - 2)")
    args = p.parse_args()
    demo = demo_model()
    var, vqvae = load_models(args.checkpoint or demo.var, args.vae or demo.vqvae)
    policy = EntropyRecorder(var.cfg, cutoff=args.cutoff)
    sampling = SamplingConfig(**demo.sampling) if args.checkpoint is None else SamplingConfig()
    engine = TorchEngine(var, vqvae)
    for c in range(args.classes):
        generate(engine, [c] * args.seeds, seed=c, sampling=sampling, policy=policy)
    probe = policy.options["probe"]
    keys = var.cfg.schedule.begin_ends[probe][1]
    score = torch.cat(policy.recorded).mean(0) / math.log(keys)
    order = score.argsort(descending=True).tolist()
    print(f"probe scale {probe}: mean attention entropy per block / log({keys} keys), most diffuse first")
    for b in order:
        print(f"  block {b:3d}: {score[b]:.3f}")
    chosen = sorted(order[: args.count])
    print(f"--policy toprovar:skip={'/'.join(map(str, chosen))}")


if __name__ == "__main__":
    main()
