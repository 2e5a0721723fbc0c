"""``varrt eval``: each policy against the full plan, same engine, same seeds and classes, one run.

For every seed the full plan and every policy generate the same batch of classes, interleaved,
so latency ratios are taken side by side. Per policy: SSIM and PSNR against the full image
(mean and worst 5% over all images), the transformer-FLOPs ratio of the plans the samples actually
ran (SkipVAR picks per sample), and the median end-to-end latency ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from varrt.engines.base import Engine
from varrt.runtime.fidelity import image_metrics, summarize
from varrt.runtime.flops import plan_flops
from varrt.runtime.generate import Generation
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.policies import Policy
from varrt.runtime.sampling import SamplingConfig


def sample_flops(engine: Engine, policy: Policy, result: Generation) -> float:
    """Mean transformer FLOPs per image of the plans ``result``'s samples finished on."""
    cfg = engine.var_config
    by_name = {p.name: sum(f.total for f in plan_flops(cfg, p)) for p in policy.plans}
    return float(np.mean([by_name[name] for name in result.plans]))


def evaluate(
    pipe: Pipeline,
    policies: Sequence[Policy | str],
    labels: Sequence[int],
    seeds: Sequence[int],
    sampling: SamplingConfig,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict:
    full = pipe.policy("full")
    policies = [pipe.policy(p) for p in policies]
    policies = [p for p in policies if p.name != full.name]  # full is always the reference
    runs: dict[str, dict] = {p.name: {"ssim": [], "psnr": [], "seconds": [], "flops": []} for p in (full, *policies)}
    for seed in seeds:
        # the reference is a run of its own, so ``full``'s row is a second run against it: 1.0 says
        # the same seed makes the same image (a real check), not an image compared with itself
        reference = pipe.generate(list(labels), seed=seed, sampling=sampling, policy=full).images
        for policy in (full, *policies):
            result = pipe.generate(list(labels), seed=seed, sampling=sampling, policy=policy)
            ssim, psnr = image_metrics(reference, result.images)
            r = runs[policy.name]
            r["ssim"].extend(ssim.tolist())
            r["psnr"].extend(psnr.tolist())
            r["seconds"].append(result.seconds["total"])
            r["flops"].append(sample_flops(pipe.engine, policy, result))
        progress(f"seed {seed}: done")
    base_seconds = float(np.median(runs[full.name]["seconds"]))
    base_flops = float(np.mean(runs[full.name]["flops"]))
    report = {}
    for name, r in runs.items():
        seconds = float(np.median(r["seconds"]))
        report[name] = {
            "ssim": summarize(r["ssim"]),
            "psnr": summarize(r["psnr"]),
            "flops_ratio": float(np.mean(r["flops"])) / base_flops,
            "seconds_median": seconds,
            "latency_ratio": seconds / base_seconds,
            "speedup": base_seconds / seconds,
        }
    return report
