"""Helpers shared by the tests: tiny models (depth 2-4, seconds each) and paths to the shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from varrt.export.bsq_vae import BSQVAE
from varrt.export.checkpoint import perturb
from varrt.export.configs import PATCH_NUMS_256, VARConfig, VQVAEConfig
from varrt.export.infinity import Infinity
from varrt.export.infinity_config import BSQVAEConfig, InfinityConfig, InfinitySchedule
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VARRT_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official-var-d2"
REFERENCE = SHARED / "reference"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not here: the shared/ folder beside the repo holds the official fixtures and listings")
    return path


def tiny_var(
    depth: int = 2,
    seed: int = 0,
    patch_nums=PATCH_NUMS_256,
    shared_aln: bool = False,
    vocab: int = 4096,
    num_classes: int = 1000,
) -> VAR:
    cfg = VARConfig(
        depth=depth,
        width=64 * depth,
        heads=depth,
        patch_nums=tuple(patch_nums),
        shared_aln=shared_aln,
        vocab_size=vocab,
        num_classes=num_classes,
        name=f"var-tiny-d{depth}",
    )
    # init_weights starts every block near the identity; perturb so that attention and the AdaLN matter
    return perturb(VAR(cfg).init_weights(seed), 0.02, seed + 1).eval().requires_grad_(False)


def tiny_vqvae(patch_nums=PATCH_NUMS_256, vocab: int = 4096) -> VQVAE:
    """A narrow VQVAE (ch 32, two levels): the real structure at a decode cost of milliseconds."""
    torch.manual_seed(0)
    cfg = VQVAEConfig(vocab_size=vocab, ch=32, ch_mult=(1, 1), num_res_blocks=1, patch_nums=tuple(patch_nums))
    return VQVAE(cfg).eval().requires_grad_(False)


def tiny_source(depth: int = 2, seed: int = 0, patch_nums=PATCH_NUMS_256) -> dict:
    """An export 'source' for the helpers' tiny models (they are not a released recipe). It names
    everything that makes the weights differ: exports of one source share a component pack, so two
    models under one source would be served each other's traced graphs."""
    pn = "" if tuple(patch_nums) == tuple(PATCH_NUMS_256) else f"patch_nums={tuple(patch_nums)}"
    var = ", ".join(x for x in (f"depth={depth}, seed={seed}", pn) if x)
    return {"random_weights": {"model": f"tests.helpers.tiny_var({var}) + tiny_vqvae({pn})"}}


def budget_plan_file(path: Path) -> Path:
    """A user plan on the 10-scale schedule: budgets with both restoration rules at the last two
    scales, the CFG branch dropped for the last three."""
    import json

    scales = [{} for _ in range(7)] + [
        {"cfg": "cond"},
        {"cfg": "cond", "budget": 85, "restore": "nearest"},
        {"cfg": "cond", "budget": 128, "restore": "cache"},
    ]
    path.write_text(json.dumps({"name": "budgets", "scales": scales}))
    return path


def layer_set_plan_file(path: Path) -> Path:
    """A user plan on the 10-scale schedule of a depth-2 model whose last two scales run block 0
    only (block 1 adds its keys and values): a layer-set graph."""
    import json

    scales = [{} for _ in range(8)] + [{"layers": [0]}, {"layers": [0]}]
    path.write_text(json.dumps({"name": "layers", "scales": scales}))
    return path


def tiny_infinity(depth: int = 4, seed: int = 0, patchify: bool = False, text_channels: int = 32) -> Infinity:
    """A narrow Infinity (width 64, 2 heads of 32, 8 or 16 bits per token): the real structure."""
    cfg = InfinityConfig(
        depth=depth,
        width=64,
        heads=2,
        d_vae=16 if patchify else 8,
        text_channels=text_channels,
        text_maxlen=16,
        block_chunks=2,
        pool_heads=2,
        patchify=patchify,
        name=f"infinity-tiny-d{depth}{'-patchify' if patchify else ''}",
    )
    model = Infinity(cfg).init_weights(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # away from the identity, so that attention, text and AdaLN all matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval().requires_grad_(False)


def tiny_bsq_vae(code_bits: int = 8) -> BSQVAE:
    torch.manual_seed(0)
    return BSQVAE(BSQVAEConfig(code_bits=code_bits, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1)).eval()


#: the 0.06M 1:1 schedule (7 scales, 1..16): the real grids at a tiny cost
TINY_SCHEDULE = InfinitySchedule.for_ratio(1.0, "0.06M")
