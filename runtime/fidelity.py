"""Fidelity of an accelerated generation against the full plan's image for the same seed and class.

SSIM and PSNR (scikit-image), the metrics SkipVAR and LD-Pruning report. Identical images have an
infinite PSNR; it is capped at ``PSNR_CAP`` dB so that means stay finite (and JSON stays valid).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

PSNR_CAP = 100.0


def image_metrics(reference: Tensor, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image SSIM and PSNR (dB) of ``images`` against ``reference``, both (B, 3, H, W) in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if reference.shape != images.shape:
        raise ValueError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape")
    ref = reference.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    img = images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    ssim = np.array([structural_similarity(r, i, channel_axis=-1, data_range=1.0) for r, i in zip(ref, img)])
    psnr = []
    for r, i in zip(ref, img):
        psnr.append(PSNR_CAP if np.array_equal(r, i) else min(PSNR_CAP, peak_signal_noise_ratio(r, i, data_range=1.0)))
    return ssim, np.array(psnr)


def summarize(values: np.ndarray | list[float]) -> dict:
    """mean, the worst 5% (5th percentile: lower is worse for SSIM and PSNR), min, count."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "worst5": float(np.percentile(v, 5)), "min": float(v.min()), "n": int(v.size)}
