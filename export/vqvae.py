"""The multi-scale residual VQVAE ``vae_ch160v4096z32`` (var-spec.md §1).

Encoder E and decoder D are a "vq-f16" CNN. The quantizer turns a latent f into one index map per
scale and back:

    r = f, f_hat = 0
    for each scale si (side pn):
        idx_si = argmin_v || area_down(r, pn) - e_v ||^2
        h      = Phi_{map[si]}( bicubic_up(e[idx_si], last) )      Phi(h) = (1 - a) h + a conv3x3(h)
        f_hat += h ;  r -= h

Generation runs the second half only: it accumulates f_hat from sampled indices and feeds the
transformer ``area_down(f_hat, pn_next)`` as the next scale's input (:meth:`MultiScaleQuantizer.next_input`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from varrt.export.configs import VQVAEConfig, phi_index_map


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the weights' dtype (norms stay fp32 in fp16/bf16 graphs)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one fused 1x1 ``qkv`` conv (3C channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, hh, ww = x.shape
        c = self.channels
        # -1, not hh * ww: with a symbolic side the exporter would emit Pow(side, 2) on int64,
        # which TensorRT's parser rejects
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, -1).unbind(1)
        w = torch.bmm(q.transpose(1, 2), k).float().mul(c**-0.5).softmax(dim=2)  # (B, HW_q, HW_k)
        h = torch.bmm(v, w.to(v.dtype).transpose(1, 2)).view(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder: ``block``, ``attn`` and an optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: Tensor) -> Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(n):
            block_out = ch * mult[lvl]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if lvl == n - 1:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if lvl != n - 1:
                level.downsample = Downsample2x(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in)
        levels: list[_Level] = []
        for lvl in reversed(range(n)):
            block_out = ch * mult[lvl]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if lvl == n - 1:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if lvl != 0:
                level.upsample = Upsample2x(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # stored 0..n-1, executed n-1..0
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """The residual refinement Phi(h) = (1 - a) h + a conv3x3(h), a = 0.5."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, 3, 1, 1)
        self.ratio = ratio

    def forward(self, h: Tensor) -> Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul(self.ratio)


class PhiPartiallyShared(nn.Module):
    def __init__(self, channels: int, count: int, ratio: float) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(count))


def bicubic_up(h: Tensor, side: int) -> Tensor:
    return h if h.shape[-1] == side else F.interpolate(h, size=(side, side), mode="bicubic")


def area_down(f: Tensor, side: int) -> Tensor:
    return f if f.shape[-1] == side else F.interpolate(f, size=(side, side), mode="area")


class QuantizedTrain(NamedTuple):
    f_hat: Tensor  # straight-through: the value of f_hat, the gradient of f
    loss: Tensor  # commitment + codebook loss, averaged over scales
    usage: Tensor  # (V,) how often each code was chosen
    residuals: Tensor  # (M, Cvae) the vectors that were quantized (to restart unused codes)


class MultiScaleQuantizer(nn.Module):
    """Codebook + the four Phi convolutions; scale -> Phi by :func:`phi_index_map`."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.quant_resi = PhiPartiallyShared(cfg.z_channels, cfg.num_phi, cfg.phi_ratio)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(cfg.ema_scales, cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.set_schedule(cfg.patch_nums)

    def set_schedule(self, patch_nums: tuple[int, ...]) -> None:
        """The same weights serve any schedule with the same last side (256 px and 512 px VAR)."""
        self.patch_nums = tuple(patch_nums)
        self.phi_map = phi_index_map(len(patch_nums), self.cfg.num_phi)

    def phi(self, si: int) -> Phi:
        return self.quant_resi.qresi_ls[self.phi_map[si]]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ema_vocab_hit_SV holds training statistics per training scale; like the official
        # quantizer, accept any first dimension instead of failing a strict load on it.
        key = prefix + "ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.ema_vocab_hit_SV.shape:
            self.ema_vocab_hit_SV = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ generation side
    def codes_to_map(self, h_BNC: Tensor, side: int) -> Tensor:
        """(B, side*side, Cvae) row-major codes -> (B, Cvae, side, side)."""
        return h_BNC.transpose(1, 2).reshape(h_BNC.shape[0], h_BNC.shape[2], side, side)

    def next_input(self, si: int, f_hat: Tensor, h_BChw: Tensor) -> tuple[Tensor, Tensor]:
        """Add scale si's codes to f_hat; return (f_hat, the next scale's input map).

        The next input is the *accumulated* f_hat resampled to the next side; at the last scale it
        is f_hat itself.
        """
        last = self.patch_nums[-1]
        f_hat = f_hat + self.phi(si)(bicubic_up(h_BChw, last))
        if si == len(self.patch_nums) - 1:
            return f_hat, f_hat
        return f_hat, area_down(f_hat, self.patch_nums[si + 1])

    def indices_to_fhat(self, idx_per_scale: list[Tensor]) -> Tensor:
        last = self.patch_nums[-1]
        b = idx_per_scale[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(b, self.cfg.z_channels, last, last)
        for si, idx in enumerate(idx_per_scale):
            f_hat, _ = self.next_input(si, f_hat, self.codes_to_map(self.embedding(idx), self.patch_nums[si]))
        return f_hat

    def teacher_inputs(self, idx_per_scale: list[Tensor]) -> Tensor:
        """Transformer inputs for teacher forcing: (B, L - 1, Cvae), the downsampled running f_hat
        before every scale but the first (the official ``idxBl_to_var_input``)."""
        last = self.patch_nums[-1]
        b = idx_per_scale[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(b, self.cfg.z_channels, last, last)
        out = []
        for si in range(len(self.patch_nums) - 1):
            h = self.codes_to_map(self.embedding(idx_per_scale[si]), self.patch_nums[si])
            f_hat, nxt = self.next_input(si, f_hat, h)
            out.append(nxt.flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------------ training
    def forward_train(self, f: Tensor, beta: float = 0.25) -> QuantizedTrain:
        """The residual quantization of training (straight-through f_hat, VQ loss, code statistics).

        loss = mean over scales of  beta * ||sg(f_hat) - f||^2  +  ||f_hat - sg(f)||^2 ; the
        encoder learns through the straight-through estimator, the codebook and Phis through
        the second term (as the official quantizer trains).
        """
        last = self.patch_nums[-1]
        codebook = self.embedding.weight
        f_ng = f.detach()
        rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
        loss = f.new_zeros(())
        usage = torch.zeros(codebook.shape[0], device=f.device)
        residuals = []
        for si, pn in enumerate(self.patch_nums):
            with torch.no_grad():
                z = area_down(rest, pn).permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
                d = (z.square().sum(1, keepdim=True) + codebook.square().sum(1)).addmm(z, codebook.T, alpha=-2)
                idx = d.argmin(dim=1)
                usage += torch.bincount(idx, minlength=codebook.shape[0])
                residuals.append(z)
            h = self.codes_to_map(self.embedding(idx.view(f.shape[0], pn * pn)), pn)
            h = self.phi(si)(bicubic_up(h, last))
            f_hat = f_hat + h
            rest = rest - h.detach()
            loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
        return QuantizedTrain((f_hat.detach() - f_ng) + f, loss / len(self.patch_nums), usage, torch.cat(residuals))

    # ------------------------------------------------------------------ encoding side
    @torch.no_grad()
    def encode_indices(self, f: Tensor) -> list[Tensor]:
        """Latent f (B, Cvae, last, last) -> one (B, pn*pn) index tensor per scale."""
        last = self.patch_nums[-1]
        codebook = self.embedding.weight
        rest, out = f.float().clone(), []
        for si, pn in enumerate(self.patch_nums):
            z = area_down(rest, pn).permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
            d = z.square().sum(1, keepdim=True) + codebook.square().sum(1)
            d = d.addmm(z, codebook.T, alpha=-2, beta=1)
            idx = d.argmin(dim=1).view(f.shape[0], pn * pn)
            h = self.phi(si)(bicubic_up(self.codes_to_map(self.embedding(idx), pn), last))
            rest = rest - h
            out.append(idx)
        return out


class VQVAE(nn.Module):
    """Encoder, decoder, quantizer and the two 3x3 convs around the latent (official keys)."""

    def __init__(self, cfg: VQVAEConfig, with_encoder: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        if with_encoder:
            self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    def encode_latent(self, img_pm1: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(img_pm1))

    def img_to_indices(self, img_01: Tensor) -> list[Tensor]:
        """Image in [0, 1] (B, 3, H, W) -> per-scale indices."""
        return self.quantize.encode_indices(self.encode_latent(img_01 * 2 - 1))

    def decode(self, f_hat: Tensor) -> Tensor:
        """f_hat -> image in [0, 1] (the official ``fhat_to_img`` followed by (x + 1) / 2)."""
        z = self.post_quant_conv(f_hat.to(self.post_quant_conv.weight.dtype))
        return self.decoder(z).float().clamp(-1, 1).add(1).mul(0.5)
