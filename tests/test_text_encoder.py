"""The T5 text path: tokenisation like T5's, bucket padding that changes nothing, loading errors."""

from __future__ import annotations

import json

import pytest
import torch

from varrt.export.text_encoder import TextEncoderError, load_text_encoder, save_text_encoder, tiny_text_encoder


@pytest.fixture(scope="module")
def encoder():
    return tiny_text_encoder(32)


def default_attention() -> str:
    """transformers' default T5 attention, what the official ``from_pretrained`` call gets: sdpa
    since T5 supports it (transformers 5.x), eager before."""
    from transformers import T5EncoderModel

    return "sdpa" if T5EncoderModel._supports_sdpa else "eager"


def test_tokenize_appends_eos_pads_and_truncates(encoder):
    ids, mask = encoder.tokenize(["a red cat", "dog"], 8)
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    assert mask.sum(1).tolist() == [4, 2]  # words + EOS
    assert ids[0, 3] == encoder.tokenizer.eos_token_id and (ids[0, 4:] == encoder.tokenizer.pad_token_id).all()
    ids, mask = encoder.tokenize(["a red cat on the sky with a tree"], 4)
    assert mask.sum() == 4


def test_bucket_padding_changes_no_feature(encoder):
    """With the mask, the real tokens' features do not depend on the padded length: varrt's 64-token
    bucket and the official 512 give the same bits with the attention implementation varrt uses."""
    assert encoder.attention == default_attention()
    prompts = ["a red cat on the sky", "dog", "a small house by the sea with a tree and a mountain at night"]
    short, lengths = encoder.encode(prompts, 64)
    long, _ = encoder.encode(prompts, 512)
    for i, n in enumerate(lengths.tolist()):
        assert torch.equal(short[i, :n], long[i, :n]), f"prompt {i}"


def test_t5_is_loaded_as_the_official_code_loads_it(encoder, tmp_path):
    """The official ``load_tokenizer`` calls ``T5EncoderModel.from_pretrained`` with transformers'
    default attention; varrt's loader gets the same implementation, hence the same features, where
    eager attention (what varrt used before) differs in the last bits."""
    from transformers import T5EncoderModel

    path = save_text_encoder(encoder, tmp_path / "t5")
    ours = load_text_encoder(path)
    official = T5EncoderModel.from_pretrained(str(path)).eval()
    ids, mask = ours.tokenize(["a red cat on the sky", "a small house by the sea"], 512)
    implementation = official.config._attn_implementation
    with torch.inference_mode():
        want = official(input_ids=ids, attention_mask=mask).last_hidden_state
        official.set_attn_implementation("eager")
        eager = official(input_ids=ids, attention_mask=mask).last_hidden_state
    got, _ = ours.encode(["a red cat on the sky", "a small house by the sea"], 512)
    assert ours.attention == implementation == default_attention()
    assert torch.equal(got, want)
    if implementation == "sdpa":
        assert not torch.equal(eager, want)  # the implementation matters at the last bits


def test_save_load_round_trip(encoder, tmp_path):
    path = save_text_encoder(encoder, tmp_path / "t5")
    again = load_text_encoder(path)
    a, _ = encoder.encode(["a blue sea"], 16)
    b, _ = again.encode(["a blue sea"], 16)
    assert torch.equal(a, b) and again.channels == 32
    assert load_text_encoder(path, load_model=False).model is None


def test_load_errors(tmp_path):
    with pytest.raises(TextEncoderError, match="not found"):
        load_text_encoder(tmp_path / "nope")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TextEncoderError, match="'bert' model.*flan-t5-xl"):
        load_text_encoder(bert)
    (bert / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    with pytest.raises(TextEncoderError, match="no tokenizer files"):
        load_text_encoder(bert)
