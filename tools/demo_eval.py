"""The demo model's figures (used by tools/train.py): reconstruction PSNR, class consistency of
samples, per-scale confidence, and the labelled sample grid.

Every figure is of the shipped (fp16-rounded) weights, sampled by the project's own generation loop
on the eager torch backend, at the sampling settings named in the result.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from varrt.engines.torch_engine import TorchEngine
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE
from varrt.runtime.confidence import scale_confidence
from varrt.runtime.demo import labelled_grid
from varrt.runtime.generate import generate
from varrt.runtime.sampling import SamplingConfig

#: nearest-neighbour bank: renders per class, and the thumbnail side distances are taken at
BANK_PER_CLASS = 200
THUMB = 32


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over a batch of images in [0, 1] (scikit-image's definition, per image)."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(np.mean([peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=1.0) for x, y in zip(a, b)]))


@torch.no_grad()
def reconstruct(model: VQVAE, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = []
    for chunk in x.split(64):
        idx = model.img_to_indices(chunk.to(device))
        out.append(model.decode(model.quantize.indices_to_fhat(idx)).cpu())
    return torch.cat(out)


def sample(var: VAR, vqvae: VQVAE, labels: list[int], sampling: SamplingConfig, seed: int, chunk: int = 64):
    """Images for ``labels``, ``chunk`` at a time; chunk i uses seed ``seed + i``."""
    engine = TorchEngine(var, vqvae)
    return torch.cat(
        [
            generate(engine, labels[i : i + chunk], seed=seed + i, sampling=sampling).images
            for i in range(0, len(labels), chunk)
        ]
    )


def nearest_class(images: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor) -> torch.Tensor:
    """The class of each image's nearest training render (pixel L2 on THUMB x THUMB thumbnails)."""

    def thumb(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(THUMB, THUMB), mode="area").flatten(1)

    return bank_labels[torch.cdist(thumb(images), thumb(bank)).argmin(dim=1)]


def class_consistency(var, vqvae, data, sampling: SamplingConfig, per_class: int, seed: int) -> dict:
    """Share of samples whose nearest training render is of the class they were sampled for
    (overall and per class); chance is 1 / classes."""
    classes = len(data.names)
    bank, bank_labels = data.sample(
        BANK_PER_CLASS * classes,
        torch.Generator().manual_seed(777),
        torch.arange(classes).repeat_interleave(BANK_PER_CLASS),
    )
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = sample(var, vqvae, labels.tolist(), sampling, seed=seed)
    hit = (nearest_class(images, bank, bank_labels) == labels).float()
    return {
        "consistency": round(float(hit.mean()), 4),
        "per_class": dict(zip(data.names, hit.view(classes, per_class).mean(1).tolist())),
        "samples": int(hit.numel()),
        "standard_error": round(math.sqrt(float(hit.mean()) * (1 - float(hit.mean())) / hit.numel()), 4),
        "chance": round(1 / classes, 4),
    }


def confidence(var: VAR, vqvae: VQVAE, classes: int, sampling: SamplingConfig, seeds: range) -> list[dict]:
    return scale_confidence(TorchEngine(var, vqvae), list(range(classes)), list(seeds), sampling)


def save_grid(var: VAR, vqvae: VQVAE, names: tuple[str, ...], sampling: SamplingConfig, path: Path, per_class: int):
    labels = torch.arange(len(names)).repeat_interleave(per_class).tolist()
    images = sample(var, vqvae, labels, sampling, seed=0)
    tmp = path.with_name(path.name + ".tmp.png")
    labelled_grid(images, labels, names, columns=per_class, scale=1).save(tmp)
    tmp.replace(path)
