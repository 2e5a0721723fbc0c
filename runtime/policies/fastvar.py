"""FastVAR (peer baseline): pivotal-token pruning with cached token restoration.

At the pruned scales, before every sub-block (attention, FFN) of the pruned blocks, the k tokens
farthest from the mean token are computed; the others take the residual delta of the reference
scale, up-sampled (area) to the current grid. Pruned tokens add no KV. Selection and restoration
happen inside the FastVAR graph, so the policy is a single static plan.

Settings. FastVAR published settings for Infinity-2B (reference 24x24; keep 615/1024 at 32x32 and
800/1600 at 40x40; blocks 3-27 of 32; 48 and 64 skipped) and HART (reference 36x36; keep 50% at
48x48 and 25% at 64x64; all blocks; nothing skipped), none for VAR's 10-scale schedules. Our
choice for VAR: HART's schedule — prune the last two scales, keeping 50% and then 25% of their
tokens (VAR's 13x13 and 16x16: 85 and 64 tokens), reference = the scale before (10x10), no skipped
scales (VAR's last scale is the decoded latent's full resolution, unlike Infinity's 64x64) — with
Infinity's block band (prune blocks round(3/32 D) .. round(28/32 D): 2..14 of 16). Every number
is a knob: ``fastvar:keep=0.5/0.25,blocks=2-14,reference=7``.
"""

from __future__ import annotations

from varrt.export.configs import VARConfig
from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, check_options
from varrt.runtime.selectors import keep_count

OPTIONS = {
    "keep": "fractions of tokens kept at the last scales, slash-separated (default 0.5/0.25)",
    "blocks": "pruned blocks first-last, last exclusive (default round(3/32 D)-round(28/32 D))",
    "reference": "scale whose deltas restore pruned tokens (default: the scale before the first pruned)",
}


class FastVarPolicy(Policy):
    name = "fastvar"

    @classmethod
    def from_options(cls, cfg: VARConfig, opts: dict[str, str]) -> FastVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            keep = tuple(float(v) for v in opts.get("keep", "0.5/0.25").split("/"))
            blocks = tuple(int(v) for v in opts["blocks"].split("-")) if "blocks" in opts else None
            reference = int(opts["reference"]) if "reference" in opts else None
        except ValueError as e:
            raise PlanError(f"fastvar options {opts}: {e}") from None
        return cls(cfg, keep, blocks, reference)

    def __init__(
        self,
        cfg: VARConfig,
        keep: tuple[float, ...] = (0.5, 0.25),
        blocks: tuple[int, int] | None = None,
        reference: int | None = None,
    ) -> None:
        sched, depth = cfg.schedule, cfg.depth
        sn = sched.num_scales
        if not keep or len(keep) >= sn or not all(0 < k <= 1 for k in keep):
            raise PlanError(f"fastvar keep {keep}: one fraction in (0, 1] per pruned last scale, fewer than {sn}")
        if blocks is None:
            a, b = round(3 / 32 * depth), round(28 / 32 * depth)
            blocks = (min(a, depth - 1), max(b, min(a, depth - 1) + 1))
        first = sn - len(keep)
        reference = first - 1 if reference is None else reference
        scales = [ScalePlan() for _ in range(sn)]
        for i, frac in enumerate(keep):
            si = first + i
            n = keep_count(sched.tokens(si), frac)
            scales[si] = ScalePlan(budget=n, restore="fastvar") if n < sched.tokens(si) else ScalePlan(budget=n)
        plan = Plan(
            "fastvar",
            tuple(scales),
            f"FastVAR: keep {'/'.join(map(str, keep))} of the last "
            f"{len(keep)} scales in blocks {blocks[0]}-{blocks[1]}, reference scale {reference}",
            fastvar_blocks=tuple(blocks),
            fastvar_reference=reference,
        )
        super().__init__((plan,), {"keep": list(keep), "blocks": list(blocks), "reference": reference})
