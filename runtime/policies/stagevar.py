"""StageVAR (arXiv 2512.16483), as its official code (github: sen-mao/FasterVAR) runs it.

**Infinity: the published setting** (``Infinity/tools/interactive_infer.py``; alpha 0.96, the last
three entries of ``cfg_list`` set to 0):

* the last three scales have cfg = 0. Under Infinity's logit guidance cfg L_c + (1 - cfg) L_u that
  is the **unconditional** (null-text) branch alone: half the rows, the unconditional half of the
  cache, of the AdaLN and of the text; the sampler reads L_u / tau [``branch=uncond``, ``late=3``];
* the last two scales (48x48 and 64x64 at 1024 px) do not run; the image is decoded from the
  codes accumulated up to 40x40 [``skip=2``];
* the late scales are low-rank (official: widths 40, 48 and 64), so the one that still runs, 40x40,
  is [``lowrank=SN-3``]: its blocks run in the checkpoint's 8 chunks (4 blocks each on Infinity-2B, 5 on 8B)
  [``chunk``]; chunk c on r_c = int(ratio_c N) + 1 Gaussian mixtures of all N tokens, ratio_c from
  the published table [``alpha=0.96``: 27, 219, 337, 401, 410, 317, 252, 306 of 1600], its outputs
  written back at positions drawn in proportion to ||x||^2, every other position restored after
  every chunk from that chunk's output at the previous scale (32x32), area-up-sampled
  (:mod:`varrt.export.stagevar` has the graph, :mod:`varrt.runtime.lowrank` the draws).

Where varrt differs, on purpose (docs/policies.md says why): the rules key on scale indices — the
last three, the last two, the third-last — so every aspect-ratio template is accelerated alike
(the official code keys on grid widths 40/48/64: 9 non-square templates only get cfg = 0, 5 crash);
the draws are seeded by the request seed, per sample (official: the unseeded global RNG, B = 1);
the low-rank scale's keys are not written when no later scale reads them (official: written, never
read). A table row exists per late scale (``scale40`` / ``scale48`` / ``scale64`` for the
third-last, second-last, last); a model whose chunk count is not the table's 8 takes, per chunk,
the table's mean over the same stretch of relative depth.

**VAR: no official setting.** The analogue of the official STAR and HART settings (both VAR-style
transformers; HART's guidance is VAR's (1 + t) L_c - t L_u and its cfg-0 scales sample the
unconditional logits alone): the last two scales on one branch [``late=2``], nothing skipped
[``skip=0``], low rank only at the last scale, per block [``chunk=1``], r = int(ratio min(N, C)) + 1
with HART's per-block table for alpha 0.96 (24 blocks, mapped onto the model's by relative depth).
Which branch is a knob (``branch=uncond`` runs the null class, ``branch=cond`` the class); the
default is the one measured closer to the full sampler on the demo model (docs/policies.md).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from varrt.runtime.plan import Plan, PlanError, ScalePlan
from varrt.runtime.policies import Policy, PolicyTarget, check_options

OPTIONS = {
    "branch": "CFG branch of the late scales: uncond (StageVAR's cfg = 0) or cond (default: Infinity uncond, as "
    "published; VAR cond, measured closer to full on the demo model)",
    "late": "how many last scales run on that branch (Infinity 3, VAR 2)",
    "skip": "how many last scales do not run (Infinity 2: 48x48 and 64x64 at 1024 px; VAR 0)",
    "lowrank": "the first low-rank scale; every scale that runs after it is low-rank too (default: Infinity SN - 3, "
    "the official 40x40 / 48x48 / 64x64 rule by index; VAR the last scale)",
    "chunk": "blocks per chunk (Infinity: depth / 8, the checkpoints' 8 chunks; VAR 1, per block as STAR and HART)",
    "alpha": "energy fraction of the published rank table (Infinity: 0.999, 0.99 ... 0.70, default 0.96; VAR: 0.96)",
    "ranks": "r per chunk, slash-separated, instead of the table (one low-rank scale)",
}
#: the published table's rows, by how far from the end the low-rank scale is (1:1 1M: 40, 48, 64)
INFINITY_ROWS = ("scale40", "scale48", "scale64")
#: VAR's default branch: the one closer to the full sampler on the demo model (docs/policies.md:
#: 8 seeds x 32 classes, SSIM 0.710 for cond vs 0.676 for uncond)
VAR_BRANCH = "cond"


@cache
def rank_tables() -> dict:
    """The published rank ratios (``data/stagevar_rank_ratio.json``: Infinity's and HART's)."""
    return json.loads(resources.files("varrt.runtime").joinpath("data/stagevar_rank_ratio.json").read_text())


def chunk_ratios(table: list[float], depth: int, chunk: int) -> list[float]:
    """Per chunk of ``chunk`` blocks, the table's ratio: the table itself when it has one entry per
    chunk, else the mean of its entries over the chunk's stretch of relative depth."""
    bounds = [(lo, min(lo + chunk, depth)) for lo in range(0, depth, chunk)]
    if len(bounds) == len(table):
        return list(table)
    t = len(table)
    out = []
    for lo, hi in bounds:
        a, b = lo / depth, hi / depth
        weights = [max(0.0, min(b, (k + 1) / t) - max(a, k / t)) for k in range(t)]
        out.append(sum(w * x for w, x in zip(weights, table)) / sum(weights))
    return out


class StageVarPolicy(Policy):
    name = "stagevar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> StageVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        try:
            ints = {k: int(opts[k]) for k in ("late", "skip", "lowrank", "chunk") if k in opts}
            ranks = tuple(int(v) for v in opts["ranks"].split("/")) if "ranks" in opts else None
        except ValueError:
            raise PlanError(
                f"stagevar options {opts}: late, skip, lowrank, chunk are whole numbers, ranks slash-separated ones"
            ) from None
        return cls(target, branch=opts.get("branch"), alpha=opts.get("alpha", "0.96"), ranks=ranks, **ints)

    def __init__(
        self,
        target: PolicyTarget,
        branch: str | None = None,
        late: int | None = None,
        skip: int | None = None,
        lowrank: int | None = None,
        chunk: int | None = None,
        alpha: str = "0.96",
        ranks: tuple[int, ...] | None = None,
    ) -> None:
        sched, depth, infinity = target.schedule, target.depth, target.family == "infinity"
        sn = sched.num_scales
        branch = branch or ("uncond" if infinity else VAR_BRANCH)
        late = (3 if infinity else 2) if late is None else late
        skip = (2 if infinity else 0) if skip is None else skip
        chunk = (max(1, depth // 8) if infinity else 1) if chunk is None else chunk
        if branch not in ("uncond", "cond"):
            raise PlanError(f"stagevar: branch must be uncond or cond, got {branch!r}")
        if not 0 <= late <= sn - 1 or not 0 <= skip <= sn - 2:
            raise PlanError(f"stagevar: late must be in 0..{sn - 1} and skip in 0..{sn - 2}, got {late} and {skip}")
        if lowrank is None:  # Infinity: the table's three scales (official: widths 40, 48, 64); VAR: the last
            lowrank = min(sn - len(INFINITY_ROWS) if infinity else sn - 1, sn - 1 - skip)
        if not 1 <= lowrank <= sn - 1 - skip:
            raise PlanError(f"stagevar: lowrank must be a scale that runs, in 1..{sn - 1 - skip}, got {lowrank}")
        if not 1 <= chunk <= depth:
            raise PlanError(f"stagevar: chunk must be 1..{depth} blocks, got {chunk}")
        if ranks is not None and lowrank != sn - 1 - skip:
            raise PlanError("stagevar: explicit ranks are for one low-rank scale (lowrank = the last scale that runs)")
        self.target, self.chunk, self.alpha = target, chunk, alpha
        scales = []
        for si in range(sn):
            run = si < sn - skip
            r = (ranks or self.table_ranks(si)) if run and si >= lowrank else None
            cfg = branch if si >= sn - late else "both"
            scales.append(ScalePlan(run=run, cfg=cfg, ranks=r, restore="stagevar" if r else "none"))
        low = [si for si, s in enumerate(scales) if s.ranks]
        stage = f"scales {sn - late}..{sn - 1} {branch}-only" if late else "both branches throughout"
        description = (
            f"StageVAR: {stage}, the last {skip} not run, scale(s) {low} low-rank in chunks of {chunk} blocks, "
            "ranks " + "; ".join("/".join(map(str, scales[si].ranks)) for si in low)
        )
        plan = Plan("stagevar", tuple(scales), description, lowrank_chunk=chunk)
        options = {"branch": branch, "late": late, "skip": skip, "lowrank": lowrank, "chunk": chunk, "alpha": alpha}
        super().__init__((plan,), {**options, "ranks": [list(scales[si].ranks) for si in low]})

    def table_ranks(self, si: int) -> tuple[int, ...]:
        """r per chunk at scale si from the published tables: Infinity int(ratio N) + 1 with the
        row of si's place among the last three scales; VAR int(ratio min(N, C)) + 1 with HART's."""
        sched, depth, infinity = self.target.schedule, self.target.depth, self.target.family == "infinity"
        family = rank_tables()["infinity" if infinity else "hart"]
        if self.alpha not in family:
            raise PlanError(f"stagevar: no published rank table for alpha={self.alpha}; known: {', '.join(family)}")
        if infinity:
            row = INFINITY_ROWS[max(0, si - (sched.num_scales - len(INFINITY_ROWS)))]
            base = sched.tokens(si)
        else:
            row, base = "scale64", min(sched.tokens(si), self.target.width or sched.tokens(si))
        ratios = chunk_ratios(family[self.alpha][row], depth, self.chunk)
        return tuple(min(sched.tokens(si), int(x * base) + 1) for x in ratios)
