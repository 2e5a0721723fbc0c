"""Reading checkpoints: official ``.pth`` files and ``.safetensors``, size inferred, strict by default.

Every failure is a :class:`CheckpointError` with one message that names the file, what is wrong
and what the file looks like instead — never a stack trace from deep inside torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from varrt.export.configs import (
    PATCH_NUMS_256,
    PATCH_NUMS_512,
    RELEASED_VAR,
    VARConfig,
    VQVAEConfig,
)
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE, MultiScaleQuantizer

StateDict = dict[str, Tensor]
#: buffers the official VAR registers that are a pure function of the config; a file may omit them
DERIVED_VAR_BUFFERS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")
CONFIG_METADATA_KEY = "varrt_config"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and the fix in the message."""


# ----------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | os.PathLike) -> StateDict:
    """The tensors of a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory; pass the checkpoint file itself")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes); download it again")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p} is not a readable PyTorch checkpoint (truncated, corrupt, or not saved with torch.save): {reason}"
        ) from None
    return _unwrap(obj, p)


def _unwrap(obj: object, p: Path) -> StateDict:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], p)
        keys = ", ".join(list(map(str, obj))[:6])
        raise CheckpointError(
            f"{p} holds a dict without tensors at the top level (keys: {keys}); "
            "pass a plain state dict, e.g. the released var_d16.pth / vae_ch160v4096z32.pth"
        )
    raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a state dict of tensors")


def read_metadata(path: str | os.PathLike) -> dict:
    """The varrt config stored in a safetensors header by :func:`save_safetensors` (or {})."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in meta else {}


def save_safetensors(state: StateDict, path: str | os.PathLike, config: dict | None = None) -> None:
    """Write tensors (contiguous, shared storage broken) atomically, with the config in the header."""
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    meta = {CONFIG_METADATA_KEY: json.dumps(config)} if config else None
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, p)


# ---------------------------------------------------------------------------------------- describing
def describe(sd: Mapping[str, Tensor]) -> str:
    """What a state dict looks like, for error messages."""
    keys = list(sd)
    if "pos_start" in sd and "pos_1LC" in sd:
        depth = _count_indexed(keys, "blocks")
        width = sd["pos_start"].shape[-1]
        name = next((n for n, c in RELEASED_VAR.items() if c.depth == depth and c.width == width), None)
        return f"a VAR transformer (depth {depth}, width {width}{', ' + name if name else ''})"
    if any(k.startswith("quantize.") for k in keys):
        if any(k.startswith("decoder.") for k in keys):
            v = sd.get("quantize.embedding.weight")
            vocab = f", codebook {tuple(v.shape)}" if v is not None else ""
            return f"a multi-scale VQVAE{vocab}"
        return "the quantizer of a VQVAE only (no decoder)"
    if any(k.startswith(("text_", "text_norm", "cfg_uncond")) for k in keys):
        return "an Infinity (text-to-image) transformer"
    return f"an unknown model (first keys: {', '.join(keys[:4])})"


def _count_indexed(keys: list[str], prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


# ---------------------------------------------------------------------------------------- VAR
def infer_var_config(sd: Mapping[str, Tensor], source: str = "checkpoint", metadata: dict | None = None) -> VARConfig:
    """The :class:`VARConfig` a VAR state dict was built with, from its shapes alone."""
    required = (
        "pos_start",
        "pos_1LC",
        "word_embed.weight",
        "class_emb.weight",
        "head.weight",
        "blocks.0.attn.scale_mul_1H11",
        "blocks.0.ffn.fc1.weight",
    )
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(
            f"{source} is not a VAR transformer checkpoint: it lacks {', '.join(missing)}; "
            f"it looks like {describe(sd)}" + (" — pass it as --vae" if "VQVAE" in describe(sd) else "")
        )
    width = sd["pos_start"].shape[-1]
    L = sd["pos_1LC"].shape[1]
    depth = _count_indexed(list(sd), "blocks")
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1]
    patch_nums = _infer_patch_nums(sd, L, source, metadata)
    cfg = VARConfig(
        depth=depth,
        width=width,
        heads=heads,
        patch_nums=patch_nums,
        shared_aln="shared_ada_lin.1.weight" in sd,
        num_classes=sd["class_emb.weight"].shape[0] - 1,
        vocab_size=sd["head.weight"].shape[0],
        latent_channels=sd["word_embed.weight"].shape[1],
        mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / width,
    )
    name = next((n for n, c in RELEASED_VAR.items() if c == cfg), None)
    if metadata and metadata.get("name"):
        name = metadata["name"]
    return dataclasses.replace(cfg, name=name or f"var-custom-d{depth}")


def _infer_patch_nums(sd: Mapping[str, Tensor], L: int, source: str, metadata: dict | None) -> tuple[int, ...]:
    if metadata and metadata.get("patch_nums"):
        return tuple(metadata["patch_nums"])
    if "lvl_1L" in sd:
        counts = torch.bincount(sd["lvl_1L"].view(-1)).tolist()
        sides = [math.isqrt(c) for c in counts]
        if all(s * s == c for s, c in zip(sides, counts)) and sum(counts) == L:
            return tuple(sides)
        raise CheckpointError(f"{source}: its lvl_1L buffer does not describe square scales ({counts})")
    for pn in (PATCH_NUMS_256, PATCH_NUMS_512):
        if sum(p * p for p in pn) == L:
            return pn
    raise CheckpointError(
        f"{source}: cannot infer the scale schedule: no lvl_1L buffer and L = {L} matches no released "
        "schedule (680 for 256 px, 2240 for 512 px)"
    )


def _mismatch_report(model: torch.nn.Module, sd: Mapping[str, Tensor], optional: re.Pattern | None) -> list[str]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not (optional and optional.match(k))]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape and not k.endswith("ema_vocab_hit_SV")
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            shown = "; ".join(items[:6]) + (f"; ... ({len(items) - 6} more)" if len(items) > 6 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    return problems


def _load_strict(
    model: torch.nn.Module,
    sd: Mapping[str, Tensor],
    source: str,
    what: str,
    optional: re.Pattern | None = None,
    strict: bool = True,
) -> None:
    problems = _mismatch_report(model, sd, optional)
    if problems and strict:
        raise CheckpointError(
            f"{source} does not match {what}: " + " | ".join(problems) + f". The file looks like {describe(sd)}."
        )
    full = dict(model.state_dict())
    own = {k: v for k, v in sd.items() if k in full and full[k].shape == v.shape}
    full.update(own)
    model.load_state_dict(full, strict=True)
    reject_non_finite(model, source)


def reject_non_finite(model: torch.nn.Module, source: str) -> None:
    """Refuse weights that hold NaN or Inf: such a model exports, compares "equal" (NaN differences
    compare as 0) and fails only while sampling. Parameters only: buffers such as attention masks
    hold -inf on purpose."""
    bad = [
        f"{name} ({int(torch.isnan(p).sum())} NaN, {int(torch.isinf(p).sum())} Inf)"
        for name, p in model.named_parameters()
        if p.is_floating_point() and not bool(torch.isfinite(p).all())
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{source} holds NaN/Inf weights in {len(bad)} tensor(s): {', '.join(bad[:3])}{more}; "
            "the file is damaged or its training diverged — use another checkpoint"
        )


def load_var(
    checkpoint: str | os.PathLike | Mapping[str, Tensor],
    strict: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> VAR:
    """Build the VAR the checkpoint describes and load it (strict: every key, every shape)."""
    if isinstance(checkpoint, Mapping):
        sd, source, meta = dict(checkpoint), "state dict", {}
    else:
        sd, source, meta = read_state_dict(checkpoint), str(checkpoint), read_metadata(checkpoint)
    cfg = infer_var_config(sd, source, meta.get("var") if meta else None)
    model = VAR(cfg)
    _load_strict(model, sd, source, f"the {cfg.label} architecture", DERIVED_VAR_BUFFERS, strict)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------- VQVAE
def infer_vqvae_config(
    sd: Mapping[str, Tensor], source: str = "checkpoint", patch_nums: tuple[int, ...] | None = None
) -> VQVAEConfig:
    if "quantize.embedding.weight" not in sd or "decoder.conv_out.weight" not in sd:
        raise CheckpointError(
            f"{source} is not a VQVAE checkpoint (no quantize.embedding.weight / decoder.conv_out.weight); "
            f"it looks like {describe(sd)}" + (" — pass it as --checkpoint" if "VAR" in describe(sd) else "")
        )
    keys = list(sd)
    levels = _count_indexed([k.removeprefix("decoder.") for k in keys if k.startswith("decoder.")], "up")
    ch = sd["decoder.conv_out.weight"].shape[1]
    mult = tuple(sd[f"decoder.up.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
    blocks = _count_indexed([k.removeprefix("decoder.up.0.") for k in keys if k.startswith("decoder.up.0.")], "block")
    vocab, z = sd["quantize.embedding.weight"].shape
    return VQVAEConfig(
        vocab_size=vocab,
        z_channels=z,
        ch=ch,
        ch_mult=mult,
        num_res_blocks=blocks - 1,
        in_channels=sd["decoder.conv_out.weight"].shape[0],
        num_phi=_count_indexed([k.removeprefix("quantize.quant_resi.") for k in keys], "qresi_ls"),
        patch_nums=tuple(patch_nums) if patch_nums else PATCH_NUMS_256,
        ema_scales=sd["quantize.ema_vocab_hit_SV"].shape[0] if "quantize.ema_vocab_hit_SV" in sd else 10,
    )


def load_vqvae(
    checkpoint: str | os.PathLike | Mapping[str, Tensor],
    patch_nums: tuple[int, ...] | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> VQVAE:
    """Build and load the VQVAE; ``patch_nums`` is the schedule of the VAR it serves.

    A file without encoder weights (a decode-only export) loads into a decoder-only VQVAE.
    """
    if isinstance(checkpoint, Mapping):
        sd, source = dict(checkpoint), "state dict"
    else:
        sd, source = read_state_dict(checkpoint), str(checkpoint)
    cfg = infer_vqvae_config(sd, source, patch_nums)
    with_encoder = any(k.startswith("encoder.") for k in sd)
    model = VQVAE(cfg, with_encoder=with_encoder)
    _load_strict(model, sd, source, "the multi-scale VQVAE architecture", None, strict)
    return model.to(device).eval().requires_grad_(False)


def load_quantizer(
    checkpoint: str | os.PathLike | Mapping[str, Tensor], patch_nums: tuple[int, ...] = PATCH_NUMS_256
) -> MultiScaleQuantizer:
    """Only the codebook and Phi convolutions (``quantize.*``): all that tokens and f_hat need."""
    if isinstance(checkpoint, Mapping):
        sd, source = dict(checkpoint), "state dict"
    else:
        sd, source = read_state_dict(checkpoint), str(checkpoint)
    qsd = {k.removeprefix("quantize."): v for k, v in sd.items() if k.startswith("quantize.")}
    if "embedding.weight" not in qsd:
        raise CheckpointError(f"{source} has no quantize.embedding.weight; it looks like {describe(sd)}")
    vocab, z = qsd["embedding.weight"].shape
    nphi = _count_indexed(list(qsd), "quant_resi.qresi_ls")
    cfg = VQVAEConfig(
        vocab_size=vocab,
        z_channels=z,
        num_phi=nphi,
        patch_nums=tuple(patch_nums),
        ema_scales=qsd["ema_vocab_hit_SV"].shape[0] if "ema_vocab_hit_SV" in qsd else 10,
    )
    q = MultiScaleQuantizer(cfg)
    _load_strict(q, qsd, source, "the VQVAE quantizer")
    return q.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------- both
def random_models(
    name: str, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[VAR, VQVAE]:
    """A released architecture with random weights (smoke runs and timing; the images are noise)."""
    from varrt.export.configs import var_config

    cfg = var_config(name)
    torch.manual_seed(seed)
    var = VAR(cfg).init_weights(seed)
    # tiny test models get a narrow VQVAE too (same structure, ch 32) so that decoding is cheap
    vcfg = VQVAEConfig(patch_nums=cfg.patch_nums, ch=32 if name.startswith("var-tiny") else 160)
    vqvae = VQVAE(vcfg)
    return (
        var.to(device=device, dtype=dtype).eval().requires_grad_(False),
        vqvae.to(device).eval().requires_grad_(False),
    )


@torch.no_grad()
def perturb(module: torch.nn.Module, std: float = 0.02, seed: int = 1) -> torch.nn.Module:
    """Add N(0, std) noise to every parameter: the official initialisation starts each block near
    the identity (AdaLN gammas ~1e-5), which random-weight tests and timings must not measure."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_((torch.randn(p.shape, generator=g) * std).to(device=p.device, dtype=p.dtype))
    return module


def load_models(
    checkpoint: str | os.PathLike,
    vae: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[VAR, VQVAE]:
    """The VAR and the VQVAE that serves it (its quantizer set to the VAR's schedule)."""
    var = load_var(checkpoint, dtype=dtype, device=device)
    vqvae = load_vqvae(vae, patch_nums=var.cfg.patch_nums, device=device)
    if vqvae.cfg.vocab_size != var.cfg.vocab_size or vqvae.cfg.z_channels != var.cfg.latent_channels:
        raise CheckpointError(
            f"{vae} does not fit {checkpoint}: the VQVAE has a {vqvae.cfg.vocab_size} x {vqvae.cfg.z_channels} "
            f"codebook, the VAR predicts {var.cfg.vocab_size} codes of {var.cfg.latent_channels} channels"
        )
    return var, vqvae
