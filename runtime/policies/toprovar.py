"""ToProVAR (entropy-aware pruning over tokens, layers and scales), from its paper: its code is not public.

What the paper states (arXiv 2602.22948, Eqs. 5-6; the method section was read through quotations,
see docs/policies.md), and how varrt runs it:

* Token dimension. The attention entropy of every token, H_i = -sum_j a_ij log a_ij, measured
  *inside attention* at the scale being pruned, normalised within a layer and scale,
  H_hat_i = H_i / sum_j H_j. varrt measures it in the self-attention of one early block
  ``entropy_block`` of the same scale, inside the ``transformer_toprovar`` graph (averaged over
  heads), and every later block keeps, in the graph, the tokens with the lowest entropy (TopK,
  gather, scatter), as FastVAR's graph does with its own criterion.
* Pruning tendency and keep probability: q_i = phi(s) R(l, s) H_hat_i with phi(s) = s / S_max, and
  P_keep(i | s, l) = 1 for s < D, else 1 - clip(alpha_min + (alpha_max - alpha_min) q_i, 0, 1).
* Layer dimension: R(l, s), the layer's score (the paper derives it from the layer's "semantic
  scope"; its values are not published).

Our choices, where the paper is silent or a static graph needs a decision (each a knob where it
can be one):

* A fixed budget per (scale, block) instead of a per-token draw: static graphs need a fixed count.
  H_hat is scaled by N (the mean token has H_hat = 1; with the paper's plain sum the mean is 1/N
  and q would vanish at large N), so sum_i P_keep = N (1 - alpha_min - (alpha_max - alpha_min)
  phi(s) R) before the clip: the budget is that expected count, k = N - floor(N p) with
  p = clip(alpha_min + (alpha_max - alpha_min) phi(s) R, 0, 1), at least one token. Within a block
  and scale P_keep falls with the entropy alone, so the top-k of P_keep are the k lowest-entropy
  tokens (the clip only ties tokens; we break ties by entropy).
* One entropy map per scale, from block ``entropy_block`` (default 0), serves all later blocks: a
  block cannot measure the entropy of tokens it does not compute without paying for the attention
  the pruning is meant to save. The blocks up to it run every token.
* A pruned token passes through the block unchanged (its residual stream skips the block) and adds
  no keys or values to that block's cache; every position leaves the scale with its own state, so
  nothing is restored. Selection is per row (CFG's two rows choose independently, as FastVAR's).
* S_max = SN - 1 with s the 0-based scale index (phi = 1 at the last scale); D = SN - 2 (the last
  two scales) [cutoff]; alpha_min = 0.3, alpha_max = 0.6 [alpha_min, alpha_max]; R = 1 for every
  block [layer_score] (``tools/toprovar_layers.py`` measures a per-block score from the blocks'
  entropy on a model, our substitute for the paper's unpublished SVD-based scores).
"""

from __future__ import annotations

import math

from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, PolicyTarget, check_options, fractions
from varrt.runtime.selectors import keep_count

OPTIONS = {
    "cutoff": "D, the first pruned scale (default SN - 2)",
    "alpha_min": "pruned share at q = 0 (default 0.3)",
    "alpha_max": "pruned share at q = 1 (default 0.6)",
    "entropy_block": "block whose attention entropy ranks the tokens; it and the blocks before it run all (default 0)",
    "layer_score": "R per block, one value or one per block slash-separated (default 1)",
}


def pruned_share(alpha_min: float, alpha_max: float, phi: float, score: float) -> float:
    """clip(alpha_min + (alpha_max - alpha_min) phi R, 0, 1): the share of a block's tokens that the
    paper's keep probability prunes in expectation at a token of mean entropy."""
    return min(1.0, max(0.0, alpha_min + (alpha_max - alpha_min) * phi * score))


class ToProVarPolicy(Policy):
    name = "toprovar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> ToProVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            cutoff = int(opts["cutoff"]) if "cutoff" in opts else None
            alphas = float(opts.get("alpha_min", 0.3)), float(opts.get("alpha_max", 0.6))
            block = int(opts.get("entropy_block", 0))
        except ValueError as e:
            raise PlanError(f"toprovar options {opts}: {e}") from None
        scores = fractions(opts.get("layer_score", "1"), "toprovar layer_score")
        return cls(target, cutoff, *alphas, entropy_block=block, layer_score=scores)

    def __init__(
        self,
        target: PolicyTarget,
        cutoff: int | None = None,
        alpha_min: float = 0.3,
        alpha_max: float = 0.6,
        entropy_block: int = 0,
        layer_score: tuple[float, ...] = (1.0,),
    ) -> None:
        sched, depth = target.schedule, target.depth
        sn = sched.num_scales
        cutoff = sn - 2 if cutoff is None else cutoff
        if not 1 <= cutoff < sn:
            raise PlanError(f"toprovar: the cut-off D must be a scale in 1..{sn - 1}, got {cutoff}")
        if not 0 <= alpha_min <= alpha_max <= 1:
            raise PlanError(f"toprovar: need 0 <= alpha_min <= alpha_max <= 1, got {alpha_min}, {alpha_max}")
        if not 0 <= entropy_block < depth - 1:
            raise PlanError(
                f"toprovar: entropy_block must leave a later block to prune (0..{depth - 2}), got {entropy_block}"
            )
        if len(layer_score) not in (1, depth) or any(not math.isfinite(r) or r < 0 for r in layer_score):
            raise PlanError(
                f"toprovar: layer_score needs one value or one per block ({depth}), each >= 0, got {layer_score}"
            )
        scores = layer_score * depth if len(layer_score) == 1 else layer_score
        scales = []
        for si in range(sn):
            n = sched.tokens(si)
            if si < cutoff:
                scales.append(ScalePlan())
                continue
            phi = si / (sn - 1)
            later = [keep_count(n, 1 - pruned_share(alpha_min, alpha_max, phi, scores[b])) for b in range(depth)]
            scales.append(ScalePlan(block_tokens=(n,) * (entropy_block + 1) + tuple(later[entropy_block + 1 :])))
        plan = Plan(
            "toprovar",
            tuple(scales),
            f"ToProVAR: from scale {cutoff} on, blocks after block {entropy_block} keep their lowest-entropy "
            f"tokens (entropy of block {entropy_block}, same scale; pruned share clip({alpha_min} + "
            f"{round(alpha_max - alpha_min, 6)} phi(s) R(l)))",
            toprovar_block=entropy_block,
        )
        knobs = {
            "cutoff": cutoff,
            "alpha_min": alpha_min,
            "alpha_max": alpha_max,
            "entropy_block": entropy_block,
            "layer_score": list(scores),
        }
        super().__init__((plan,), knobs)
