"""ToProVAR (entropy-aware token pruning), reconstructed: its code is not public.

Token dimension. At a probe scale the engine returns every token's attention entropy per block
(computed inside the graph from the attention probabilities: -sum p log p, averaged over heads; a
separate "probe" graph, so that the other graphs keep TensorRT's fused attention). From the cut-off
scale on, tokens with high entropy (diffuse attention) tend to be pruned: each late scale keeps the
tokens with the lowest entropy, read from the probe scale's map up-sampled (area) to its grid and
averaged over the blocks; the rest take the previous scale's states (cached restoration).

Scale dimension. The pruning tendency grows with the scale, phi(s) = s / (SN - 1): scale s >= D
prunes the fraction alpha_min + (alpha_max - alpha_min) phi(s) of its tokens (static budgets, the
top-k form of the paper's keep probability).

Layer dimension. From the cut-off scale on, the blocks in ``skip`` do not run: their tokens pass
through unchanged and the block only projects their keys and values for the cache (a layer-set
graph, ``transformer_layers``, with the skipped blocks compiled in; 4 C^2 of a block's 24 C^2 per
token). Which blocks are redundant is an offline entropy analysis, since a static graph cannot
depend on one image: ``python tools/toprovar_layers.py`` runs the probe over a few samples and
names the blocks whose attention is most diffuse (highest mean entropy) at the probe scale; pass
them as ``toprovar:skip=i/j/k``. Default: no block skipped (the paper's layer scores are not
published, and a wrong choice costs fidelity, not speed).

Why one layer-set graph rather than a segment split (one engine per run of blocks, called in turn
with the runtime skipping segments): a split adds an engine call and a hidden-state round trip per
segment at every scale and breaks TensorRT's fusion at each cut; the layer-set graph adds no weight
bytes to the export (shared weights file) but, under TensorRT, one more engine with its own copy of
the transformer weights. Latency over GPU memory; see docs/policies.md.

Choices (knobs in brackets): probe = the scale before the cut-off [probe]; cut-off D = SN - 2 (the
last two scales) [cutoff]; alpha_min 0.3, alpha_max 0.6 [alpha_min, alpha_max]; blocks weighted
equally in the token score (the paper's layer scores are not published); skipped blocks [skip].
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options
from varrt.runtime.selectors import keep_count, top_tokens, upsample_tokens

OPTIONS = {
    "cutoff": "first pruned scale D (default SN - 2)",
    "probe": "probe scale (default D - 1)",
    "alpha_min": "pruned fraction at phi = 0 (default 0.3)",
    "alpha_max": "at phi = 1 (default 0.6)",
    "skip": "blocks not run from the cut-off on, e.g. 9/10/11 (default none; tools/toprovar_layers.py)",
}


def parse_blocks(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(b) for b in text.split("/") if b}))


class ToProVarPolicy(Policy):
    name = "toprovar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> ToProVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            cutoff = int(opts["cutoff"]) if "cutoff" in opts else None
            probe = int(opts["probe"]) if "probe" in opts else None
            alphas = float(opts.get("alpha_min", 0.3)), float(opts.get("alpha_max", 0.6))
            return cls(target, cutoff, probe, *alphas, skip=parse_blocks(opts.get("skip", "")))
        except ValueError as e:
            raise PlanError(f"toprovar options {opts}: {e}") from None

    def __init__(
        self,
        target: PolicyTarget,
        cutoff: int | None = None,
        probe: int | None = None,
        alpha_min: float = 0.3,
        alpha_max: float = 0.6,
        skip: tuple[int, ...] = (),
    ) -> None:
        sched = target.schedule
        sn = sched.num_scales
        cutoff = sn - 2 if cutoff is None else cutoff
        probe = cutoff - 1 if probe is None else probe
        if not 0 <= probe < cutoff < sn:
            raise PlanError(f"toprovar: need 0 <= probe < cutoff < {sn}, got probe {probe}, cutoff {cutoff}")
        if not 0 <= alpha_min <= alpha_max < 1:
            raise PlanError(f"toprovar: need 0 <= alpha_min <= alpha_max < 1, got {alpha_min}, {alpha_max}")
        if not all(0 <= b < target.depth for b in skip) or len(skip) >= target.depth:
            raise PlanError(f"toprovar: skip must name some (not all) of the blocks 0..{target.depth - 1}, got {skip}")
        layers = tuple(b for b in range(target.depth) if b not in skip) if skip else None
        scales = []
        for si in range(sn):
            n = sched.tokens(si)
            if si < cutoff:
                scales.append(ScalePlan())
                continue
            keep = 1 - (alpha_min + (alpha_max - alpha_min) * sched.progress(si))
            budget = keep_count(n, keep)
            pruned = dict(budget=budget, restore="cache") if budget < n else {}
            scales.append(ScalePlan(**pruned, layers=layers))
        plan = Plan(
            "toprovar",
            tuple(scales),
            f"ToProVAR: entropy probe at scale {probe}, lowest-entropy tokens kept "
            f"from scale {cutoff} on (pruned fraction {alpha_min} + {alpha_max - alpha_min} phi(s))"
            + (f", blocks {'/'.join(map(str, skip))} skipped" if skip else ""),
        )
        plan = replace(plan, probe_scale=probe)
        knobs = {"cutoff": cutoff, "probe": probe, "alpha_min": alpha_min, "alpha_max": alpha_max, "skip": list(skip)}
        super().__init__((plan,), knobs)

    def select(self, si: int, plan: Plan, state: ScaleState) -> Tensor:
        sched = state.schedule
        g = state.groups[0]
        b = state.x.shape[0]
        ent = g.entropy[:b].mean(1, keepdim=True).transpose(1, 2)  # (b, n_probe, 1): blocks weighted equally
        up = upsample_tokens(ent, g.entropy_grid, sched.grids[si]).squeeze(-1)
        return top_tokens(-up, plan.tokens(si, sched))  # keep the lowest entropy; conditional rows
