"""The models' state dicts equal the official listings: every key, in order, with shape and dtype."""

from __future__ import annotations

import ast

import pytest
import torch

from varrt.export.configs import RELEASED_VAR, VQVAEConfig
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE


def read_listing(path) -> list[tuple[str, tuple[int, ...], str]]:
    out = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        out.append((key, tuple(ast.literal_eval(shape)), dtype))
    return out


def listing_of(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("name", list(RELEASED_VAR))
def test_var_state_dict_matches_official_listing(name, reference_dir):
    cfg = RELEASED_VAR[name]
    with torch.device("meta"):
        model = VAR(cfg)
    assert listing_of(model) == read_listing(reference_dir / f"var_state_dict_d{cfg.depth}.txt")
    assert sum(p.numel() for p in model.parameters()) == cfg.param_count()


def test_released_param_counts_match_the_readme():
    counts = {n: c.param_count() for n, c in RELEASED_VAR.items()}
    assert counts == {
        "var-d16": 310_283_520,
        "var-d20": 600_917_136,
        "var-d24": 1_033_399_360,
        "var-d30": 2_010_020_356,
        "var-d36": 2_353_893_904,
    }


def test_vqvae_state_dict_matches_official_listing(reference_dir):
    with torch.device("meta"):
        model = VQVAE(VQVAEConfig())
    assert listing_of(model) == read_listing(reference_dir / "vqvae_state_dict.txt")
    assert sum(p.numel() for p in model.parameters()) == 108_948_355
