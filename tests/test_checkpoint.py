"""Checkpoint loading: official files load strictly, and every bad file gets one clear error."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_var, tiny_vqvae
from varrt.export.checkpoint import (
    CheckpointError,
    infer_var_config,
    infer_vqvae_config,
    load_models,
    load_quantizer,
    load_var,
    load_vqvae,
    read_metadata,
    save_safetensors,
)
from varrt.export.configs import PATCH_NUMS_512, RELEASED_VAR, VQVAEConfig
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE


def test_official_fixture_loads_strictly(fixtures_dir):
    var = load_var(fixtures_dir / "var_d2.pth")
    assert (var.cfg.depth, var.cfg.width, var.cfg.heads) == (2, 128, 2)
    assert var.cfg.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    sd = torch.load(fixtures_dir / "var_d2.pth", weights_only=True)
    for k, v in var.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", list(RELEASED_VAR))
def test_size_is_inferred_from_shapes(name):
    with torch.device("meta"):
        sd = VAR(RELEASED_VAR[name]).state_dict()
    cfg = infer_var_config(sd)
    assert cfg == RELEASED_VAR[name] and cfg.label == name


def test_schedule_inferred_without_lvl_buffer():
    with torch.device("meta"):
        sd = VAR(RELEASED_VAR["var-d36"]).state_dict()
    del sd["lvl_1L"]
    assert infer_var_config(sd).patch_nums == PATCH_NUMS_512


def test_vqvae_config_inferred():
    with torch.device("meta"):
        sd = VQVAE(VQVAEConfig()).state_dict()
    assert infer_vqvae_config(sd) == VQVAEConfig()


def test_safetensors_roundtrip_with_config(tmp_path):
    var = tiny_var(2, patch_nums=(1, 2, 3, 4))
    p = tmp_path / "m.safetensors"
    save_safetensors(var.state_dict(), p, {"var": var.cfg.to_dict()})
    back = load_var(p)
    assert back.cfg == var.cfg and back.cfg.label == "var-tiny-d2"
    assert read_metadata(p)["var"]["patch_nums"] == [1, 2, 3, 4]
    for k, v in var.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_derived_buffers_may_be_absent(tmp_path):
    var = tiny_var(2)
    sd = {k: v for k, v in var.state_dict().items() if "zero_k_bias" not in k and k != "attn_bias_for_masking"}
    back = load_var(sd)
    assert torch.equal(back.attn_bias_for_masking, var.attn_bias_for_masking)


def test_missing_file():
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_var("/nonexistent/var_d16.pth")


def test_empty_file(tmp_path):
    p = tmp_path / "var.pth"
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_var(p)


def test_truncated_file(tmp_path, fixtures_dir):
    data = (fixtures_dir / "var_d2.pth").read_bytes()
    p = tmp_path / "truncated.pth"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_var(p)


def test_corrupt_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_var(p)


def test_vqvae_given_as_var_checkpoint(tmp_path):
    p = tmp_path / "vae.pth"
    torch.save(tiny_vqvae().state_dict(), p)
    with pytest.raises(CheckpointError, match=r"not a VAR transformer checkpoint.*VQVAE.*--vae"):
        load_var(p)


def test_var_given_as_vqvae_checkpoint(tmp_path):
    p = tmp_path / "var.pth"
    torch.save(tiny_var(2).state_dict(), p)
    with pytest.raises(CheckpointError, match=r"not a VQVAE checkpoint.*VAR transformer.*--checkpoint"):
        load_vqvae(p)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = tiny_var(2).state_dict()
    del sd["blocks.1.ffn.fc2.bias"]
    sd["blocks.1.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        load_var(sd)
    msg = str(e.value)
    assert "1 missing keys: blocks.1.ffn.fc2.bias" in msg and "1 unexpected keys: blocks.1.extra.weight" in msg
    assert "looks like a VAR transformer (depth 2" in msg


def test_shape_mismatch_is_named():
    sd = tiny_var(2).state_dict()
    sd["blocks.0.attn.proj.weight"] = torch.zeros(128, 64)
    with pytest.raises(CheckpointError, match=r"blocks.0.attn.proj.weight: file \(128, 64\) vs model \(128, 128\)"):
        load_var(sd)


def test_non_strict_load_keeps_what_fits():
    var = tiny_var(2)
    sd = var.state_dict()
    del sd["head.bias"]
    back = load_var(sd, strict=False)
    assert torch.equal(back.head.weight, var.head.weight)


def test_mismatched_pair(tmp_path):
    var_p, vae_p = tmp_path / "var.pth", tmp_path / "vae.pth"
    torch.save(tiny_var(2, vocab=4096).state_dict(), var_p)
    torch.save(tiny_vqvae(vocab=512).state_dict(), vae_p)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_models(var_p, vae_p)


def test_quantizer_only_file(fixtures_dir):
    q = load_quantizer(fixtures_dir / "vae_quantize_only.pth")
    assert q.embedding.weight.shape == (4096, 32) and q.phi_map == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def test_training_wrapper_is_unwrapped(tmp_path):
    p = tmp_path / "wrapped.pth"
    torch.save({"model": tiny_var(2).state_dict()}, p)
    assert load_var(p).cfg.depth == 2


def test_dict_without_tensors(tmp_path):
    p = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "args": {"lr": 1}}, p)
    with pytest.raises(CheckpointError, match="without tensors"):
        load_var(p)
