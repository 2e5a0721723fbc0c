"""Fidelity metrics, the evaluation against the full plan, and the SkipVAR refit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_var, tiny_vqvae
from varrt.engines.torch_engine import TorchEngine
from varrt.export.configs import var_config
from varrt.runtime.evaluate import evaluate
from varrt.runtime.fidelity import PSNR_CAP, image_metrics, summarize
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.policies import make_policy
from varrt.runtime.policies.skipvar import SkipVarPolicy, fit_selector, strategy_labels
from varrt.runtime.sampling import SamplingConfig


def test_metrics_of_identical_and_noisy_images():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 32, 32, generator=g)
    ssim, psnr = image_metrics(ref, ref.clone())
    assert np.allclose(ssim, 1.0) and np.all(psnr == PSNR_CAP)
    noisy = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    ssim2, psnr2 = image_metrics(ref, noisy)
    assert np.all(ssim2 < 0.95) and np.all((psnr2 > 15) & (psnr2 < 25))
    mse = ((ref - noisy) ** 2).mean(dim=(1, 2, 3)).numpy()
    assert np.allclose(psnr2, 10 * np.log10(1.0 / mse), atol=1e-3)  # PSNR's definition, independently
    with pytest.raises(ValueError, match="differ in shape"):
        image_metrics(ref, ref[:2])


def test_summary_worst_five_percent():
    s = summarize(list(range(100)))
    assert s["mean"] == 49.5 and s["worst5"] == pytest.approx(4.95) and s["min"] == 0 and s["n"] == 100


def test_eval_full_against_itself_is_perfect():
    engine = TorchEngine(tiny_var(2, patch_nums=(1, 2, 3, 4, 6, 8)), tiny_vqvae(patch_nums=(1, 2, 3, 4, 6, 8)))
    full = make_policy("full", engine.var_config)
    report = evaluate(Pipeline(engine), [full], [1, 2], [0, 1], SamplingConfig(cfg=2, top_k=0, top_p=0.9))
    assert report["full"]["ssim"]["mean"] == pytest.approx(1.0) and report["full"]["psnr"]["min"] == PSNR_CAP
    assert report["full"]["flops_ratio"] == 1.0 and report["full"]["ssim"]["n"] == 4


def test_strategy_labels_take_the_most_aggressive_strategy_that_keeps_ssim():
    # plans 1..3 skip the last k scales, 4..6 drop the uncond branch for the last k
    ssim = {
        1: [0.95, 0.80, 0.70],
        2: [0.90, 0.70, 0.60],
        3: [0.70, 0.60, 0.50],
        4: [0.99, 0.90, 0.70],
        5: [0.95, 0.85, 0.60],
        6: [0.90, 0.70, 0.50],
    }
    skip, uncond = strategy_labels(ssim, 0.84)
    assert skip == [2, 0, 0] and uncond == [-1, 2, 0]


def test_refit_recovers_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(200, 2))
    skip = np.where(x[:, 0] < 0.3, 3, np.where(x[:, 0] < 0.6, 1, 0))
    uncond = np.where(skip == 0, np.where(x[:, 1] > 0.5, 2, 0), -1)
    model = fit_selector(x.tolist(), skip.tolist(), uncond.tolist())
    policy = SkipVarPolicy(var_config("var-tiny-d2"), model)
    pred = policy.decide(torch.tensor(x, dtype=torch.float32)).numpy()
    expected = np.where(skip > 0, skip, np.where(uncond > 0, uncond + 3, 0))
    assert (pred == expected).mean() > 0.9
    assert model["label_counts"]["skip"] == np.bincount(skip, minlength=4).tolist()
