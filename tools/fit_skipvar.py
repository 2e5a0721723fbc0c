"""Refit SkipVAR's selector on a model: ``python tools/fit_skipvar.py --seeds 24 --out skipvar_demo.json``.

For every sample: the decision features of the full generation, and the SSIM against the full image
of each strategy's image (same seed, same class). The label is the most aggressive strategy that
keeps SSIM >= threshold; two logistic regressions are fitted like SkipVAR's shipped ones and saved
as JSON that ``--policy skipvar:model=FILE`` loads. The published coefficients were fitted on
Infinity-2B at 1024 px; they do not transfer to other models as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from varrt.engines.torch_engine import TorchEngine
from varrt.export.checkpoint import load_models
from varrt.runtime.bench import git_commit, machine, write_results
from varrt.runtime.demo import demo_model
from varrt.runtime.fidelity import image_metrics
from varrt.runtime.generate import generate
from varrt.runtime.policies import ScaleState, StaticPolicy
from varrt.runtime.policies.skipvar import SkipVarPolicy, fit_selector, published_models, strategy_labels
from varrt.runtime.sampling import SamplingConfig


class FeatureRecorder(SkipVarPolicy):
    """SkipVAR's feature extraction on the full plan: records, never switches."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg, published_models()["models"]["0.84"])
        self.recorded: list[list[float]] = []

    def after_scale(self, state: ScaleState) -> None:
        if state.si == self.decision:
            self.recorded.extend(self.features(state).tolist())
        return None


def collect(engine, labels: list[int], seeds: list[int], sampling: SamplingConfig):
    recorder = FeatureRecorder(engine.var_config)
    ssim: dict[int, list[float]] = {p: [] for p in range(1, 7)}
    for seed in seeds:
        full = generate(engine, labels, seed=seed, sampling=sampling, policy=recorder)
        for p in range(1, 7):
            images = generate(
                engine, labels, seed=seed, sampling=sampling, policy=StaticPolicy(recorder.plans[p])
            ).images
            ssim[p].extend(image_metrics(full.images, images)[0].tolist())
        print(f"seed {seed}: {len(recorder.recorded)} samples", flush=True)
    return recorder.recorded, ssim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="VAR checkpoint (default: the demo model)")
    p.add_argument("--vae", type=Path)
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--threshold", type=float, default=0.84, help="SSIM a strategy must keep against full")
    p.add_argument("--cfg", type=float, help="guidance (default: the demo model's)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if not args.out.parent.is_dir():
        p.error(f"--out {args.out}: the folder {args.out.parent} does not exist")
    torch.set_num_threads(torch.get_num_threads())
    if args.checkpoint:
        var, vqvae = load_models(args.checkpoint, args.vae)
        labels, sampling = [207, 88, 360, 980], SamplingConfig()
    else:
        demo = demo_model()
        var, vqvae = load_models(demo.var, demo.vqvae)
        labels = list(range(len(demo.classes)))
        sampling = SamplingConfig(**{**demo.sampling, **({"cfg": args.cfg} if args.cfg else {})})
    features, ssim = collect(TorchEngine(var, vqvae), labels, list(range(args.seeds)), sampling)
    skip, uncond = strategy_labels(ssim, args.threshold)
    model = fit_selector(features, skip, uncond)
    model.update(
        {
            "threshold": args.threshold,
            "samples": len(features),
            "model": var.cfg.label,
            "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p},
            "features": ["diff_hf", "hf_ratio"],
            "fitted_with": {
                "command": " ".join(["tools/fit_skipvar.py", *(argv if argv is not None else sys.argv[1:])]),
                "seeds": args.seeds,
                "classes": labels,
                "commit": git_commit(),
                "machine": machine(),
            },
        }
    )
    write_results(args.out.with_suffix(""), {args.out.suffix or ".json": json.dumps(model, indent=1)})
    print(f"wrote {args.out}: skip labels {model['label_counts']['skip']}, uncond {model['label_counts']['uncond']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
