"""Infinity's text path before the transformer: Flan-T5-XL's tokenizer and encoder (infinity-spec.md §3).

Prompts are tokenised to a fixed length with EOS appended (the mask covers the tokens and EOS), and
the HF ``T5EncoderModel``'s ``last_hidden_state`` is the text feature (float32). The official code
always pads to 512 tokens; with the attention mask, T5's features of the real tokens do not depend
on how much padding follows (padded keys are masked, the relative position bias depends on
distances only), so varrt pads to the smallest bucket that holds the prompt (:func:`text_bucket`):
same features, a fraction of the encoder's cost. Weights are the user's (a local folder).

T5 is loaded exactly as the official ``load_tokenizer`` loads it (``T5EncoderModel.from_pretrained``
without ``attn_implementation``), so both get transformers' default attention for T5: ``sdpa`` in
the releases that support it for T5 (those since the T5 attention refactor), ``eager`` before.
The two differ in the last bits (7e-7 on the tests' tiny T5, ~5e-6 reported at flan-t5-xl size);
with the same one, features at varrt's 64-token bucket equal those at the official 512 bit for bit
(tests/test_text_encoder.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from varrt.export.checkpoint import CheckpointError, reject_non_finite

#: padded prompt lengths (T5 tokens incl. EOS): every bucket is a static shape of the text graphs
TEXT_BUCKETS = (64, 128, 256, 512)


class TextEncoderError(ValueError):
    """A text encoder folder that cannot be used, with the fix."""


def text_bucket(lengths: Tensor | list[int], maxlen: int = 512, buckets: tuple[int, ...] = TEXT_BUCKETS) -> int:
    """The smallest bucket (capped at ``maxlen``) that holds the longest prompt."""
    longest = int(max(int(x) for x in lengths))
    for b in (*(x for x in buckets if x < maxlen), maxlen):
        if b >= longest:
            return b
    return maxlen  # tokenisation truncates at maxlen


class TextEncoder:
    """Tokenizer + T5 encoder. ``model`` may be None (tokenizer only: compiled backends run the encoder)."""

    def __init__(self, tokenizer, model: nn.Module | None, channels: int) -> None:
        self.tokenizer, self.model, self.channels = tokenizer, model, channels

    @property
    def attention(self) -> str | None:
        """The T5 attention implementation transformers picked (``sdpa`` or ``eager``)."""
        return None if self.model is None else self.model.config._attn_implementation

    def tokenize(self, prompts: list[str], length: int) -> tuple[Tensor, Tensor]:
        """input_ids and attention_mask, int64 (B, length): EOS appended, padded with the pad id, truncated."""
        enc = self.tokenizer(
            list(prompts), max_length=length, padding="max_length", truncation=True, return_tensors="pt"
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    @torch.inference_mode()
    def encode(self, prompts: list[str], length: int) -> tuple[Tensor, Tensor]:
        """(features float32 (B, length, d_model), lengths (B,))."""
        if self.model is None:
            raise TextEncoderError("this TextEncoder was loaded without its model (tokenizer only)")
        ids, mask = self.tokenize(prompts, length)
        return TextEncoderGraph(self.model)(ids, mask), mask.sum(1)


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask (B, L) -> T5 features (B, L, d_model) float32: the exported graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()


def load_text_encoder(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu", load_model: bool = True
) -> TextEncoder:
    """The flan-t5-xl folder (``save_pretrained`` layout: config.json, weights, tokenizer files)."""
    import json

    p = Path(path)
    if not p.is_dir():
        raise TextEncoderError(f"text encoder folder not found: {p}; pass the flan-t5-xl folder (--text-encoder DIR)")
    cfg_file = p / "config.json"
    if not cfg_file.exists():
        raise TextEncoderError(f"{p} has no config.json: not a Hugging Face model folder (flan-t5-xl)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise TextEncoderError(f"{cfg_file} is not valid JSON: {e}") from None
    if config.get("model_type") != "t5":
        raise TextEncoderError(
            f"{p} holds a {config.get('model_type')!r} model; Infinity reads the encoder of flan-t5-xl (model_type t5)"
        )
    if not any((p / f).exists() for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
        raise TextEncoderError(
            f"{p} has no tokenizer files (tokenizer.json / spiece.model); copy flan-t5-xl's tokenizer there"
        )
    from transformers import AutoTokenizer, T5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p), legacy=True)
    except Exception as e:  # transformers raises OSError, ValueError, ... for bad folders
        raise TextEncoderError(f"cannot load the tokenizer from {p}: {str(e).splitlines()[0]}") from None
    model = None
    if load_model:
        try:
            model = T5EncoderModel.from_pretrained(str(p), dtype=dtype)  # the official call: default attention
        except Exception as e:
            raise TextEncoderError(f"cannot load the T5 encoder from {p}: {str(e).splitlines()[0]}") from None
        model = model.to(device).eval().requires_grad_(False)
        try:
            reject_non_finite(model, str(p))
        except CheckpointError as e:
            raise TextEncoderError(str(e)) from None
    return TextEncoder(tokenizer, model, int(config["d_model"]))


def tiny_text_encoder(channels: int = 32, seed: int = 0) -> TextEncoder:
    """A tiny random T5 encoder (2 layers, gated GELU like flan-t5) with a word-level tokenizer built
    here (no download): for tests and smoke runs, never for images."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocabulary = (
        "a an the of on in with and photo painting red green blue small large cat dog tree house "
        "sky sea mountain city night day portrait woman man bird flower car river light dark"
    )
    words = ["<pad>", "</s>", "<unk>", *vocabulary.split(" ")]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(words),
        d_model=channels,
        d_ff=2 * channels,
        d_kv=channels // 4,
        num_heads=4,
        num_layers=2,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(config).eval().requires_grad_(False)
    return TextEncoder(tokenizer, model, channels)


def save_text_encoder(encoder: TextEncoder, path: str | os.PathLike) -> Path:
    """Write model + tokenizer in the ``save_pretrained`` layout that :func:`load_text_encoder` reads."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(str(p))
    encoder.tokenizer.save_pretrained(str(p))
    return p
