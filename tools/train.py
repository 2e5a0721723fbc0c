"""Train the small demo VQVAE + VAR on photographs that ship with scikit-image (no downloads).

The models are the project's own VQVAE and VAR classes at small sizes — the same multi-scale
residual quantizer, AdaLN blocks and null-class CFG as the released checkpoints — so the demo runs
every code path of the real thing. Class = source photograph.

    python tools/train.py                      # the committed demo model (2 CPU cores, ~45 min)
    python tools/train.py --device cuda --preset gpu --out /tmp/demo-gpu

Outputs (in --out): var.safetensors, vqvae.safetensors, demo.json (classes, recipe, metrics),
train_log.json, samples.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from varrt.export.checkpoint import save_safetensors
from varrt.export.configs import VARConfig, VQVAEConfig
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE

#: training photographs (class id = index); all ship inside scikit-image
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
)
#: photographs never trained on, for the reconstruction figure on unseen content
UNSEEN = ("cell", "brick", "clock")


@dataclass(frozen=True)
class Recipe:
    """Sizes and schedule of one training run. The defaults are the committed demo model: about
    45 minutes on 2 CPU cores (VQVAE ~18 min, VAR ~26 min, evaluation ~2 min)."""

    image: int = 48  # crop side in pixels
    short_side: tuple[int, int] = (80, 144)  # photos are rescaled so their short side falls in this range
    scales: int = 6  # rescaled versions per photo
    vq_ch: int = 32
    vq_ch_mult: tuple[int, ...] = (1, 1, 2)  # downsampling 4: a 12 x 12 latent for 48 px
    vq_res_blocks: int = 1
    vocab: int = 1024
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12)
    vq_steps: int = 2200
    vq_batch: int = 16
    vq_lr: float = 2e-3
    revive_every: int = 50  # restart codes unused for this many steps (until 80% of training)
    var_depth: int = 6
    var_width: int = 192
    var_steps: int = 1400
    var_batch: int = 16
    var_lr: float = 1.5e-3
    label_dropout: float = 0.1  # labels replaced by the null class (classifier-free guidance)
    pool: int = 16000  # crops encoded once for VAR training
    seed: int = 0
    # demo sampling (the figures below are measured at these settings)
    cfg: float = 3.0
    top_k: int = 0
    top_p: float = 0.9

    def vqvae_config(self) -> VQVAEConfig:
        return VQVAEConfig(
            vocab_size=self.vocab,
            z_channels=32,
            ch=self.vq_ch,
            ch_mult=self.vq_ch_mult,
            num_res_blocks=self.vq_res_blocks,
            patch_nums=self.patch_nums,
            ema_scales=len(self.patch_nums),
        )

    def var_config(self) -> VARConfig:
        return VARConfig(
            depth=self.var_depth,
            width=self.var_width,
            heads=max(1, self.var_width // 64),
            patch_nums=self.patch_nums,
            num_classes=len(PHOTOS),
            vocab_size=self.vocab,
            latent_channels=32,
            name="var-demo",
        )


PRESETS = {
    "cpu": Recipe(),
    "gpu": Recipe(
        image=64,
        short_side=(112, 192),
        vq_ch=64,
        vq_ch_mult=(1, 2, 2),
        vq_res_blocks=2,
        vocab=2048,
        patch_nums=(1, 2, 3, 4, 6, 8, 11, 16),
        vq_steps=6000,
        vq_batch=64,
        var_depth=12,
        var_width=384,
        var_steps=12000,
        var_batch=64,
        pool=60000,
    ),
}


# ------------------------------------------------------------------------------------------ data
def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample as float32 RGB in [0, 1] (grey photos become three equal channels)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    return img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else float(img.max() or 1))


class Crops:
    """Random square crops of rescaled photographs (scale jitter, no flips: a sample is a view)."""

    def __init__(self, names: tuple[str, ...], recipe: Recipe) -> None:
        self.size = recipe.image
        lo, hi = recipe.short_side
        self.levels: list[list[torch.Tensor]] = []
        for name in names:
            photo = Image.fromarray((load_photo(name) * 255).round().astype(np.uint8))
            versions = []
            for side in np.linspace(lo, hi, recipe.scales):
                w, h = photo.size
                s = side / min(w, h)
                im = photo.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.LANCZOS)
                versions.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1))
            self.levels.append(versions)

    def sample(
        self, n: int, g: torch.Generator, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            labels = torch.randint(0, len(self.levels), (n,), generator=g)
        out = torch.empty(n, 3, self.size, self.size)
        for i, c in enumerate(labels.tolist()):
            versions = self.levels[c]
            img = versions[int(torch.randint(0, len(versions), (1,), generator=g))]
            y = int(torch.randint(0, img.shape[1] - self.size + 1, (1,), generator=g))
            x = int(torch.randint(0, img.shape[2] - self.size + 1, (1,), generator=g))
            out[i] = img[:, y : y + self.size, x : x + self.size]
        return out, labels


# ------------------------------------------------------------------------------------------ helpers
def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + peak * 0.05 * 0.5


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over a batch of images in [0, 1] (scikit-image's definition, per image)."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(np.mean([peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=1.0) for x, y in zip(a, b)]))


class Log:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.t0 = time.time()

    def __call__(self, **row) -> None:
        row["minutes"] = round((time.time() - self.t0) / 60, 2)
        self.rows.append(row)
        print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------ stage 1
def train_vqvae(recipe: Recipe, data: Crops, device: torch.device, log: Log) -> VQVAE:
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    model = VQVAE(recipe.vqvae_config()).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.vq_lr, betas=(0.9, 0.95), weight_decay=0.0)
    usage = torch.zeros(recipe.vocab, device=device)
    dead_count = 0
    for step in range(recipe.vq_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.vq_steps, recipe.vq_lr)
        x, _ = data.sample(recipe.vq_batch, g)
        x = x.to(device)
        f = model.encode_latent(x * 2 - 1)
        q = model.quantize.forward_train(f)
        vq_loss = q.loss
        y = model.decoder(model.post_quant_conv(q.f_hat)).add(1).mul(0.5)
        rec = F.mse_loss(y, x) + 0.2 * (y - x).abs().mean()
        loss = rec + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        usage += q.usage
        if (step + 1) % recipe.revive_every == 0:
            dead = (usage == 0).nonzero().view(-1)
            dead_count = len(dead)
            if dead_count and step + 1 < recipe.vq_steps * 0.8:
                _revive_codes(model, q.residuals, dead, g)
            usage.zero_()
        if (step + 1) % 100 == 0:
            log(
                stage="vqvae",
                step=step + 1,
                loss=round(loss.item(), 5),
                vq=round(vq_loss.item(), 5),
                psnr=round(psnr(y.detach().clamp(0, 1).cpu(), x.cpu()), 2),
                dead_codes=dead_count,
            )
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _revive_codes(model: VQVAE, residuals: torch.Tensor, dead: torch.Tensor, g: torch.Generator) -> None:
    """Unused codes restart at residual vectors just quantized (keeps the whole codebook alive)."""
    z = residuals
    pick = torch.randint(0, z.shape[0], (len(dead),), generator=g).to(z.device)
    model.quantize.embedding.weight[dead] = z[pick] + 0.01 * torch.randn_like(z[pick])


@torch.no_grad()
def reconstruct(model: VQVAE, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = []
    for chunk in x.split(64):
        idx = model.img_to_indices(chunk.to(device))
        out.append(model.decode(model.quantize.indices_to_fhat(idx)).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ stage 2
@torch.no_grad()
def encode_pool(
    model: VQVAE, data: Crops, n: int, seed: int, device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    per_scale: list[list[torch.Tensor]] = [[] for _ in model.quantize.patch_nums]
    labels = []
    for start in range(0, n, 256):
        x, lab = data.sample(min(256, n - start), g)
        for si, idx in enumerate(model.img_to_indices(x.to(device))):
            per_scale[si].append(idx.to(torch.int16).cpu())
        labels.append(lab)
    return [torch.cat(p) for p in per_scale], torch.cat(labels)


def train_var(
    recipe: Recipe,
    vqvae: VQVAE,
    pool: tuple[list[torch.Tensor], torch.Tensor],
    held: tuple[list[torch.Tensor], torch.Tensor],
    device: torch.device,
    log: Log,
) -> VAR:
    g = torch.Generator().manual_seed(recipe.seed + 1)
    torch.manual_seed(recipe.seed + 1)
    cfg = recipe.var_config()
    model = VAR(cfg).init_weights(recipe.seed).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_" not in n and "emb" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_" not in n and "emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=recipe.var_lr,
        betas=(0.9, 0.95),
    )
    quant = vqvae.quantize
    idx_pool, labels_pool = pool
    n = labels_pool.shape[0]
    for step in range(recipe.var_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.var_steps, recipe.var_lr, warmup=200)
        pick = torch.randint(0, n, (recipe.var_batch,), generator=g)
        idx = [p[pick].long().to(device) for p in idx_pool]
        labels = labels_pool[pick].to(device)
        drop = torch.rand(labels.shape, generator=g).to(device) < recipe.label_dropout
        labels = torch.where(drop, cfg.null_class, labels)
        with torch.no_grad():
            x_in = quant.teacher_inputs(idx)
        logits = model(labels, x_in)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.cat(idx, 1).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        if (step + 1) % 100 == 0:
            log(
                stage="var",
                step=step + 1,
                loss=round(loss.item(), 4),
                held_out=round(held_out_loss(model, quant, held, device), 4),
            )
    return model.eval().requires_grad_(False)


@torch.no_grad()
def held_out_loss(model: VAR, quant, held, device: torch.device) -> float:
    was = model.training
    model.eval()
    idx_all, labels = held
    idx = [p[:256].long().to(device) for p in idx_all]
    logits = model(labels[:256].to(device), quant.teacher_inputs(idx))
    model.train(was)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.cat(idx, 1).reshape(-1)).item()


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def sample(var: VAR, vqvae: VQVAE, labels: list[int], recipe: Recipe, seed: int, cfg: float) -> torch.Tensor:
    from varrt.engines.torch_engine import TorchEngine
    from varrt.runtime.generate import generate
    from varrt.runtime.sampling import SamplingConfig

    engine = TorchEngine(var, vqvae)
    s = SamplingConfig(cfg=cfg, top_k=recipe.top_k, top_p=recipe.top_p)
    return torch.cat(
        [generate(engine, labels[i : i + 40], seed=seed + i, sampling=s).images for i in range(0, len(labels), 40)]
    )


def nearest_source(images: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor) -> torch.Tensor:
    """The source photograph of each image's nearest training crop (L2 on 16x16 thumbnails)."""

    def thumb(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(16, 16), mode="area").flatten(1)

    d = torch.cdist(thumb(images), thumb(bank))
    return bank_labels[d.argmin(dim=1)]


def class_consistency(var: VAR, vqvae: VQVAE, data: Crops, recipe: Recipe, cfg: float, per_class: int = 20) -> float:
    g = torch.Generator().manual_seed(777)
    bank, bank_labels = data.sample(400 * len(PHOTOS), g, torch.arange(len(PHOTOS)).repeat_interleave(400))
    labels = torch.arange(len(PHOTOS)).repeat_interleave(per_class).tolist()
    images = sample(var, vqvae, labels, recipe, seed=1000, cfg=cfg)
    return float((nearest_source(images, bank, bank_labels) == torch.tensor(labels)).float().mean())


def save_grid(var: VAR, vqvae: VQVAE, recipe: Recipe, path: Path, per_class: int = 8) -> None:
    from varrt.runtime.images import grid

    labels = torch.arange(len(PHOTOS)).repeat_interleave(per_class).tolist()
    images = sample(var, vqvae, labels, recipe, seed=0, cfg=recipe.cfg)
    big = F.interpolate(images, scale_factor=2, mode="nearest")
    Image.fromarray(grid(big, columns=per_class)).save(path)


# ------------------------------------------------------------------------------------------ saving
HALF_EXEMPT = ("ema_vocab",)  # training statistics stay fp32


@torch.no_grad()
def round_to_half(model: torch.nn.Module) -> torch.nn.Module:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not any(x in name for x in HALF_EXEMPT):
            t.copy_(t.half().float())
    return model


def save_half(state: dict, path: Path, config: dict) -> None:
    save_safetensors(
        {
            k: v.half() if v.is_floating_point() and not any(x in k for x in HALF_EXEMPT) else v
            for k, v in state.items()
        },
        path,
        config,
    )


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "runtime" / "data" / "demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a recipe field, e.g. --set vq_steps=200 (for experiments)",
    )
    p.add_argument("--stage", choices=["all", "vqvae"], default="all")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = PRESETS[args.preset]
    for item in args.set:
        key, value = item.split("=", 1)
        kind = type(getattr(recipe, key))
        recipe = dataclasses.replace(recipe, **{key: tuple(json.loads(value)) if kind is tuple else kind(value)})
    device = torch.device(args.device)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log()
    log(
        stage="start",
        recipe=dataclasses.asdict(recipe),
        torch=torch.__version__,
        device=str(device),
        threads=args.threads,
    )

    data = Crops(PHOTOS, recipe)
    # the demo ships fp16 weights: each stage is rounded and saved as soon as it is trained, and every
    # figure below is of the shipped weights
    vqvae = round_to_half(train_vqvae(recipe, data, device, log))
    save_half(vqvae.state_dict(), out / "vqvae.safetensors", {"vqvae": vqvae.cfg.to_dict()})
    held_x, _ = data.sample(512, torch.Generator().manual_seed(12345))
    unseen_x, _ = Crops(UNSEEN, recipe).sample(256, torch.Generator().manual_seed(54321))
    metrics = {
        "vqvae_psnr_heldout_crops": round(psnr(reconstruct(vqvae, held_x, device), held_x), 2),
        "vqvae_psnr_unseen_photos": round(psnr(reconstruct(vqvae, unseen_x, device), unseen_x), 2),
    }
    log(stage="vqvae-eval", **metrics)
    if args.stage == "vqvae":
        return 0

    pool = encode_pool(vqvae, data, recipe.pool, recipe.seed + 2, device)
    held = encode_pool(vqvae, data, 256, recipe.seed + 3, device)
    log(stage="pool", crops=recipe.pool)
    var = round_to_half(train_var(recipe, vqvae, pool, held, device, log)).cpu()
    save_half(var.state_dict(), out / "var.safetensors", {"var": var.cfg.to_dict()})
    vqvae = vqvae.cpu()
    metrics["var_heldout_cross_entropy"] = round(held_out_loss(var, vqvae.quantize, held, torch.device("cpu")), 4)
    metrics["uniform_cross_entropy"] = round(math.log(recipe.vocab), 4)
    for cfg in sorted({1.0, 2.0, 4.0, recipe.cfg}):
        metrics[f"class_consistency_cfg{cfg:g}"] = round(class_consistency(var, vqvae, data, recipe, cfg), 3)
    log(stage="var-eval", **metrics)

    save_grid(var, vqvae, recipe, out / "samples.png")
    demo = {
        "classes": list(PHOTOS),
        "sampling": {"cfg": recipe.cfg, "top_k": recipe.top_k, "top_p": recipe.top_p},
        "recipe": dataclasses.asdict(recipe),
        "metrics": metrics,
        "trained_with": {
            "device": str(device),
            "threads": args.threads,
            "torch": torch.__version__,
            "minutes": round((time.time() - log.t0) / 60, 1),
            "command": "python tools/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        },
    }
    (out / "demo.json").write_text(json.dumps(demo, indent=1))
    (out / "train_log.json").write_text(json.dumps(log.rows, indent=0))
    log(stage="done", out=str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
