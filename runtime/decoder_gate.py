"""The int8 decoder's fidelity gate: its images against the fp32 decoder's on held-out generations.

An int8 export keeps an int8 decoder only where this says its images stay close to fp32's (mean
SSIM >= ``export.quantize.DECODER_GATE``). The latents are the f_hat of generations with other
seeds than the calibration's (``Calibration.held_out``), so the gate does not grade the scales on
the data they were fitted to. Both decoders run on ONNX Runtime's CPU provider, as exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from varrt.engines.ort_engine import _import_ort, session_options
from varrt.export.quantize import DECODER_GATE
from varrt.runtime.fidelity import image_metrics, summarize


def decoder_fidelity(fp32: Path, int8: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """SSIM / PSNR of the images of decoder graph ``int8`` against those of ``fp32`` on ``feeds``
    (``{"f_hat": ...}`` each)."""
    if not feeds:
        raise ValueError("the decoder gate needs held-out latents (no generation decoded)")
    ort = _import_ort()
    runs = []
    for graph in (fp32, int8):
        session = ort.InferenceSession(str(graph), session_options(None), providers=["CPUExecutionProvider"])
        runs.append(np.concatenate([session.run(None, {"f_hat": f["f_hat"]})[0] for f in feeds]))
        del session
    ssim, psnr = image_metrics(torch.from_numpy(runs[0]), torch.from_numpy(runs[1]))
    return {"ssim": summarize(ssim), "psnr": summarize(psnr), "images": int(ssim.size), "gate_ssim": DECODER_GATE}
