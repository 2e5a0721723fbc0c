"""The demo model's training pieces (tools/): emoji renders, the nearest-neighbour class check, and
a deterministic training loop. Needs the Debian package fonts-noto-color-emoji."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from helpers import REPO

sys.path.insert(0, str(REPO / "tools"))
emoji_data = pytest.importorskip("emoji_data")
if not emoji_data.FONT.exists():
    pytest.skip(f"{emoji_data.FONT} is missing: apt-get install fonts-noto-color-emoji", allow_module_level=True)

import demo_eval  # noqa: E402
import train  # noqa: E402


@pytest.fixture(scope="module")
def renders():
    return emoji_data.EmojiRenders(emoji_data.EMOJI, 64)


def test_renders_are_seeded_augmented_and_on_white(renders):
    a, la = renders.sample(6, torch.Generator().manual_seed(3))
    b, lb = renders.sample(6, torch.Generator().manual_seed(3))
    c, _ = renders.sample(6, torch.Generator().manual_seed(4), la)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)  # same classes, other augmentation
    assert a.shape == (6, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    ink = (a < 0.9).any(1).float().mean((1, 2))
    assert ((ink > 0.15) & (ink < 0.9)).all()  # the emoji fills much of the image, not all of it
    assert (a[:, :, :2, :2] == 1).all()  # corners stay white


def test_nearest_render_names_the_class_and_not_noise(renders):
    """The class-consistency check itself: true renders are recognised, noise is at chance."""
    classes = len(emoji_data.EMOJI)
    bank, bank_labels = renders.sample(8 * classes, torch.Generator().manual_seed(0), torch.arange(classes).repeat(8))
    fresh, labels = renders.sample(2 * classes, torch.Generator().manual_seed(1), torch.arange(classes).repeat(2))
    assert (demo_eval.nearest_class(fresh, bank, bank_labels) == labels).float().mean() >= 0.95
    noise = torch.rand(2 * classes, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert (demo_eval.nearest_class(noise, bank, bank_labels) == labels).float().mean() <= 0.25


def test_training_is_deterministic():
    recipe = train.Recipe(
        image=16, patch_nums=(1, 2, 4), vocab=64, vq_steps=3, vq_batch=2, revive_every=2,
        var_depth=1, var_width=64, var_steps=2, var_batch=2, pool=8,
    )  # fmt: skip
    data = emoji_data.EmojiRenders(emoji_data.EMOJI, recipe.image, recipe.augment())
    cpu = torch.device("cpu")

    def run():
        log = train.Log()
        vqvae = train.train_vqvae(recipe, data, cpu, log)
        pool = train.encode_pool(vqvae, data, recipe.pool, 2, cpu)
        var = train.train_var(recipe, vqvae, pool, pool, cpu, log)
        return {**vqvae.state_dict(), **{f"var.{k}": v for k, v in var.state_dict().items()}}

    first, second = run(), run()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["var.head.weight"], train.VAR(recipe.var_config()).init_weights(0).head.weight)


def test_decoder_steps_leave_the_tokens_alone():
    """The decoder-only stage may run before or after the VAR: the VAR's tokens do not change."""
    recipe = train.Recipe(image=16, patch_nums=(1, 2, 4), vocab=64, vq_steps=2, vq_batch=2, dec_steps=3)
    data = emoji_data.EmojiRenders(emoji_data.EMOJI, recipe.image, recipe.augment())
    cpu, log = torch.device("cpu"), train.Log()
    vqvae = train.train_vqvae(recipe, data, cpu, log)
    before = train.encode_pool(vqvae, data, 8, 2, cpu)
    decoder = {k: v.clone() for k, v in vqvae.decoder.state_dict().items()}
    train.finetune_decoder(recipe, vqvae, data, cpu, log)
    after = train.encode_pool(vqvae, data, 8, 2, cpu)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert any(not torch.equal(v, vqvae.decoder.state_dict()[k]) for k, v in decoder.items())


def test_a_run_in_stages_makes_the_bytes_of_the_one_command(tmp_path, monkeypatch):
    """The committed model was trained in stages (--stage vqvae; --stage var; --stage decoder on a
    copy of that VQVAE): its checkpoints must be byte for byte those of ``python tools/train.py``."""
    for figures in ("vqvae_metrics", "var_metrics"):  # the figures are not what this checks
        monkeypatch.setattr(train, figures, lambda *a, **k: {})
    monkeypatch.setattr(train.demo_eval, "save_grid", lambda *a, **k: None)
    threads = torch.get_num_threads()
    tiny = ["--threads", "1"] + [
        a
        for kv in ("image=16", "patch_nums=[1,2,4]", "vocab=64", "vq_steps=3", "vq_batch=2", "revive_every=2",
                   "var_depth=1", "var_width=64", "var_steps=2", "var_batch=2", "pool=8")
        for a in ("--set", kv)
    ]  # fmt: skip
    whole, staged, dec = tmp_path / "whole", tmp_path / "staged", tmp_path / "dec"
    try:
        assert train.main(["--out", str(whole), *tiny, "--set", "dec_steps=2"]) == 0
        assert train.main(["--stage", "vqvae", "--out", str(staged), *tiny, "--set", "dec_steps=0"]) == 0
        dec.mkdir()
        shutil.copy(staged / "vqvae.safetensors", dec)
        assert train.main(["--stage", "var", "--out", str(staged), *tiny, "--set", "dec_steps=2"]) == 0
        assert train.main(["--stage", "decoder", "--out", str(dec), *tiny, "--set", "dec_steps=2"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (whole / "var.safetensors").read_bytes() == (staged / "var.safetensors").read_bytes()
    assert (whole / "vqvae.safetensors").read_bytes() == (dec / "vqvae.safetensors").read_bytes()
    assert (staged / "vqvae.safetensors").read_bytes() != (dec / "vqvae.safetensors").read_bytes()  # decoder steps ran


def test_stage_var_needs_the_recipes_vqvae(tmp_path):
    with pytest.raises(SystemExit, match="is missing; train it first with --stage vqvae"):
        train.main(["--stage", "var", "--out", str(tmp_path), "--threads", str(torch.get_num_threads())])
