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
Infinity's block band scaled to the depth (prune blocks round(3/32 D) .. round(28/32 D): 2..14 of
16). Every number is a knob: ``fastvar:keep=0.5/0.25,blocks=2-14,reference=7``.

On Infinity the published settings are the default: ``keep=0.6/0.5,skip=2`` — 615/1024 and 800/1600
at scales 9 and 10 of 13, reference scale 8 (24x24), blocks [3, 28) whatever the depth, as the
released code hard-codes them (Infinity-8B: 3-27 of 40, not the proportional [4, 35), which no
measurement here supports; docs/policies.md), the last two scales not run
(the image is decoded from the codes accumulated up to 40x40). The released code keys its rules on
the grid width (32/40 prune, 48/64 skip), so it accelerates only square schedules; here they key on
the scale index, so every aspect-ratio template gets the same treatment. In Infinity blocks the
selection happens before each of the three sub-blocks (self-attention, cross-attention, FFN).
"""

from __future__ import annotations

from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, PolicyTarget, check_options
from varrt.runtime.selectors import keep_count

OPTIONS = {
    "keep": "fractions of tokens kept at the pruned scales, slash-separated (VAR 0.5/0.25, Infinity 0.6/0.5)",
    "skip": "last scales not run at all, after the pruned ones (VAR 0, Infinity 2: 48x48 and 64x64)",
    "blocks": "pruned blocks first-last, last exclusive (default Infinity 3-28, VAR round(3/32 D)-round(28/32 D))",
    "reference": "scale whose deltas restore pruned tokens (default: the scale before the first pruned)",
}
#: the published (Infinity-2B) and our (VAR) settings: kept fractions of the pruned scales, skipped last scales
DEFAULTS = {"var": ((0.5, 0.25), 0), "infinity": ((0.6, 0.5), 2)}
#: the released code's pruned blocks, ``range(3, 28)`` at every depth (``fastvar_basic.py``)
OFFICIAL_BLOCKS = (3, 28)


def default_blocks(family: str, depth: int) -> tuple[int, int]:
    """Infinity: the released band, cut to the model's blocks (what the released code prunes at any
    depth). VAR (no published setting): the band scaled to the depth. At least one block."""
    if family == "infinity":
        a, b = min(OFFICIAL_BLOCKS[0], depth - 1), min(OFFICIAL_BLOCKS[1], depth)
    else:
        a, b = min(round(3 / 32 * depth), depth - 1), round(28 / 32 * depth)
    return a, max(b, a + 1)


class FastVarPolicy(Policy):
    name = "fastvar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> FastVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        keep, skip = DEFAULTS[target.family]
        try:
            keep = tuple(float(v) for v in opts["keep"].split("/")) if "keep" in opts else keep
            skip = int(opts.get("skip", skip))
            blocks = tuple(int(v) for v in opts["blocks"].split("-")) if "blocks" in opts else None
            reference = int(opts["reference"]) if "reference" in opts else None
        except ValueError as e:
            raise PlanError(f"fastvar options {opts}: {e}") from None
        return cls(target, keep, blocks, reference, skip)

    def __init__(
        self,
        target: PolicyTarget,
        keep: tuple[float, ...] = (0.5, 0.25),
        blocks: tuple[int, int] | None = None,
        reference: int | None = None,
        skip: int = 0,
    ) -> None:
        sched, depth = target.schedule, target.depth
        sn = sched.num_scales
        if not keep or len(keep) + skip >= sn or not all(0 < k <= 1 for k in keep) or skip < 0:
            raise PlanError(
                f"fastvar keep {keep}, skip {skip}: one fraction in (0, 1] per pruned scale, and fewer pruned "
                f"plus skipped scales than the schedule's {sn}"
            )
        if blocks is None:
            blocks = default_blocks(target.family, depth)
        first = sn - skip - len(keep)
        reference = first - 1 if reference is None else reference
        scales = [ScalePlan() for _ in range(sn)]
        for i, frac in enumerate(keep):
            si = first + i
            n = keep_count(sched.tokens(si), frac)
            scales[si] = ScalePlan(budget=n, restore="fastvar") if n < sched.tokens(si) else ScalePlan(budget=n)
        for si in range(sn - skip, sn):
            scales[si] = ScalePlan(run=False)
        skipped = f", last {skip} scales skipped" if skip else ""
        plan = Plan(
            "fastvar",
            tuple(scales),
            f"FastVAR: keep {'/'.join(map(str, keep))} of scales {first}-{first + len(keep) - 1} in blocks "
            f"[{blocks[0]}, {blocks[1]}), reference scale {reference}{skipped}",
            fastvar_blocks=tuple(blocks),
            fastvar_reference=reference,
        )
        knobs = {"keep": list(keep), "skip": skip, "blocks": list(blocks), "reference": reference}
        super().__init__((plan,), knobs)
