"""SkipVAR: per-sample, frequency-aware choice between skipping the last scales and dropping the
unconditional branch for them.

After the decision scale, the accumulated latent before and after it is down-sampled to a small
grid and decoded (two tiny decodes); the Sobel high-frequency difference of the two images and the
FFT high-frequency ratio of the new one are standardised and fed to multinomial logistic
regressions. The skip model picks k in 0..3 (skip the last k scales); for k = 0 the second model
picks the number of last scales that run conditional-only (0 = none). Features are computed on
images in [-1, 1], as the official code does.

Mapping to VAR. The official code decides after scale 9 of Infinity's 13 (three scales left) and
decodes the grid of scale 4; we decide after scale SN - 4 (VAR's 10 scales: after 8x8) and decode
the grid of scale 4 (5x5 -> 80 px), down-sampling by area (VAR's down-sampling mode). The published
coefficients were fitted on Infinity-2B at 1024 px and do not transfer as they are: ``model=FILE``
loads a refit (tools/fit_skipvar.py) of the same form; ``model=demo`` the demo model's own refit.

Batches. Every sample gets its own strategy. At the decision the batch splits into one group per
strategy; each group's cache rows are copied once and it runs at its own size, or padded to a
bucketed one (B, B // 2, ..., 1: the sizes an export builds for the scales after the decision; see
varrt.runtime.groups). With B = 1 — the only case the official code supports — there is nothing to
split.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from varrt.export.graphs import GraphSpec, decoder_spec
from varrt.export.vqvae import area_down
from varrt.runtime.plan import Plan, PlanError
from varrt.runtime.policies import Policy, PolicyTarget, ScaleState, check_options
from varrt.runtime.selectors import high_frequency_difference, high_frequency_ratio, logistic_argmax

OPTIONS = {
    "threshold": "SSIM target of the published models: 0.84, 0.86 or 0.88 (default 0.84)",
    "variant": "lr (both features, default) or diff_only (0.84 only)",
    "model": "a JSON file of refit coefficients (tools/fit_skipvar.py) instead of the published ones; "
    "'demo': the refit shipped with the demo model",
    "decision": "scale after which to decide (default SN - 4)",
    "grid": "scale whose grid the two small decodes use (default 4)",
}


#: the selector refit on the bundled demo model (tools/fit_skipvar.py; its JSON says on what)
DEMO_REFIT = Path(str(resources.files("varrt.runtime").joinpath("data/demo/skipvar.json")))


def published_models() -> dict:
    return json.loads(resources.files("varrt.runtime").joinpath("data/skipvar_infinity2b.json").read_text())


def strategy_plans(full: Plan, k_max: int = 3) -> tuple[Plan, ...]:
    """base, skip1..skip3 (last k scales not run), uncond1..uncond3 (last k conditional only)."""
    sn = len(full.scales)
    plans = [replace(full, name="skipvar-base")]
    for k in range(1, k_max + 1):
        plans.append(
            Plan(
                f"skipvar-skip{k}",
                tuple(replace(s, run=False) if si >= sn - k else s for si, s in enumerate(full.scales)),
            )
        )
    for k in range(1, k_max + 1):
        plans.append(
            Plan(
                f"skipvar-uncond{k}",
                tuple(replace(s, cfg="cond") if si >= sn - k else s for si, s in enumerate(full.scales)),
            )
        )
    return tuple(plans)


class SkipVarPolicy(Policy):
    name = "skipvar"

    @classmethod
    def from_options(cls, target: PolicyTarget, opts: dict[str, str]) -> SkipVarPolicy:
        check_options(cls.name, opts, OPTIONS)
        if "model" in opts:
            path = DEMO_REFIT if opts["model"] == "demo" else Path(opts["model"])
            if not path.exists():
                raise PlanError(f"skipvar model file not found: {path}")
            models = json.loads(path.read_text())
            key = "refit"
        else:
            threshold = opts.get("threshold", "0.84")
            variant = opts.get("variant", "lr")
            key = threshold if variant == "lr" else f"{threshold}-{variant}"
            table = published_models()["models"]
            if key not in table:
                raise PlanError(
                    f"skipvar: no published model for threshold={threshold}, variant={variant}; "
                    f"available: {sorted(table)}"
                )
            models = table[key]
        try:
            decision = int(opts["decision"]) if "decision" in opts else None
            grid = int(opts.get("grid", 4))
        except ValueError as e:
            raise PlanError(f"skipvar options {opts}: {e}") from None
        return cls(target, models, decision, grid, {**opts, "model_key": key})

    def __init__(
        self,
        target: PolicyTarget,
        models: dict,
        decision: int | None = None,
        grid: int = 4,
        options: dict | None = None,
    ) -> None:
        sched = target.schedule
        sn = sched.num_scales
        self.decision = sn - 4 if decision is None else decision
        if not 0 <= self.decision <= sn - 4:
            raise PlanError(
                f"skipvar: the decision scale must leave 3 scales to act on (0..{sn - 4}), got {self.decision}"
            )
        if not 0 <= grid < sn:
            raise PlanError(f"skipvar: grid scale {grid} is outside the schedule (0..{sn - 1})")
        self.grid = sched.grids[grid]
        self.models = models
        self.split_from = self.decision + 1
        super().__init__(strategy_plans(Plan.full(sched)), options or {})

    def extra_graphs(self, vcfg, batch: int, patchify: bool = False) -> list[GraphSpec]:
        return [decoder_spec(vcfg, 2 * batch, self.grid[0])]

    def small_decodes(self, state: ScaleState) -> Tensor:
        """(2B, 3, h, w) in [0, 1]: the latents one scale earlier, then now, decoded at the small
        grid (the family's decoder and down-sampling)."""
        engine, side = state.engine, self.grid[0]
        small = torch.cat((area_down(state.f_hat_prev, side), area_down(state.f_hat, side)))
        graph = decoder_spec(engine.vqvae_config, small.shape[0], side)
        return engine.run(graph, {"f_hat": small.to(engine.device)})["image"]

    def features(self, state: ScaleState) -> Tensor:
        """(B, 2): diff_hf and hf_ratio of every sample (or (B, 1) for the diff-only models), on
        images in [-1, 1] (the official scale)."""
        b = state.f_hat.shape[0]
        images = self.small_decodes(state).float().cpu() * 2 - 1
        old, new = images[:b], images[b:]
        diff, ratio = high_frequency_difference(new, old), high_frequency_ratio(new)
        return torch.stack((diff, ratio), 1)[:, : len(self.models["skip"]["mean"])]

    def decide(self, features: Tensor) -> Tensor:
        """Features (B, F) -> plan index per sample (0 base, 1..3 skip k, 4..6 uncond k)."""
        skip = logistic_argmax(features, self.models["skip"])
        uncond = logistic_argmax(features, self.models["uncond"])
        return torch.where(skip > 0, skip, torch.where(uncond > 0, uncond + 3, 0))

    def after_scale(self, state: ScaleState) -> Tensor | None:
        if state.si != self.decision:
            return None
        return self.decide(self.features(state))


# ------------------------------------------------------------------------------------ refitting
#: SkipVAR's strategies from the least to the most aggressive, by plan index
SKIP_PLANS, UNCOND_PLANS = (1, 2, 3), (4, 5, 6)


def strategy_labels(ssim: dict[int, list[float]], threshold: float) -> tuple[list[int], list[int]]:
    """Per sample: the largest k whose skip-k image keeps SSIM >= threshold against full (0 if none),
    and, for the samples with k = 0, the largest k whose uncond-k image does (0 if none)."""
    n = len(ssim[SKIP_PLANS[0]])
    skip, uncond = [], []
    for i in range(n):
        k = max([j + 1 for j, p in enumerate(SKIP_PLANS) if ssim[p][i] >= threshold], default=0)
        skip.append(k)
        if k == 0:
            uncond.append(max([j + 1 for j, p in enumerate(UNCOND_PLANS) if ssim[p][i] >= threshold], default=0))
        else:
            uncond.append(-1)
    return skip, uncond


def fit_selector(features: list[list[float]], skip: list[int], uncond: list[int]) -> dict:
    """StandardScaler + multinomial LogisticRegression (lbfgs, C = 1), as SkipVAR's shipped models,
    for the skip decision (all samples) and the uncond decision (samples labelled skip 0)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("refitting the SkipVAR selector needs scikit-learn: pip install 'varrt[eval]'") from None
    import numpy as np

    def one(x: np.ndarray, y: np.ndarray) -> dict:
        scaler = StandardScaler().fit(x)
        classes = sorted(set(y.tolist()))
        if len(classes) == 1:  # a single strategy fits every sample: predict it always
            return {
                "mean": scaler.mean_.tolist(),
                "scale": scaler.scale_.tolist(),
                "classes": classes,
                "coef": [[0.0] * x.shape[1]],
                "intercept": [0.0],
            }
        lr = LogisticRegression(C=1.0, max_iter=1500).fit(scaler.transform(x), y)
        coef, intercept = lr.coef_, lr.intercept_
        if len(classes) == 2:  # sklearn keeps one row for two classes: expand to the multinomial form
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        return {
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
            "classes": [int(c) for c in lr.classes_],
            "coef": coef.tolist(),
            "intercept": intercept.tolist(),
        }

    x = np.asarray(features, dtype=np.float64)
    s, u = np.asarray(skip), np.asarray(uncond)
    keep = s == 0
    return {
        "skip": one(x, s),
        "uncond": one(x[keep], u[keep]) if keep.any() else one(x, np.zeros_like(s)),
        "label_counts": {
            "skip": np.bincount(s, minlength=4).tolist(),
            "uncond": np.bincount(u[keep], minlength=4).tolist() if keep.any() else [0, 0, 0, 0],
        },
    }
