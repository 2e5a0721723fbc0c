"""Train the small demo VQVAE + VAR on colour emoji (Debian's fonts-noto-color-emoji, no downloads).

The models are the project's own VQVAE and VAR classes at small sizes — the same multi-scale
residual quantizer, AdaLN blocks and null-class CFG as the released checkpoints, and the released
256 px schedule (1-2-3-4-5-6-8-10-13-16, 680 tokens) at 64 px — so the demo runs every code path of
the real thing and a policy's "last scales" mean what they mean on var-d16. Class = emoji.

    python tools/train.py                      # the committed demo model (2 CPU threads, 1.5-3 h on a shared VM)
    python tools/train.py --device cuda --preset gpu --out /tmp/demo-gpu
    python tools/train.py --stage eval         # figures, grid and demo.json of the checkpoints in --out
    python tools/train.py --stage sweep        # class consistency over a guidance / top-p grid (seed set A)
    python tools/train.py --stage decoder --set dec_steps=N   # decoder-only steps on the VQVAE in --out
    python tools/train.py --stage vqvae; python tools/train.py --stage var   # a whole run in two parts

Outputs (in --out): var.safetensors, vqvae.safetensors, demo.json (classes, sampling, recipe,
metrics, trained_with), train_log.json, samples.png. The training renders are drawn on the fly.
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

# OpenMP threads that spin while they wait burn the shared cores: on 2 cores shared with other jobs
# a VQVAE step took 51 s with the default policy and 6 s with this one (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import demo_eval
import torch
import torch.nn.functional as F
from emoji_data import EMOJI, UNSEEN, Augment, EmojiRenders, font_sha256

from varrt.export.checkpoint import load_models, save_safetensors
from varrt.export.configs import PATCH_NUMS_256, VARConfig, VQVAEConfig
from varrt.export.var import VAR
from varrt.export.vqvae import VQVAE
from varrt.runtime.sampling import SamplingConfig

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runtime" / "data" / "demo"


@dataclass(frozen=True)
class Recipe:
    """Sizes and schedule of one training run. The defaults are the committed demo model."""

    image: int = 64  # render side in pixels: a 16 x 16 latent at downsampling 4
    size: tuple[float, float] = (0.78, 0.94)  # augmentation: the emoji's side / the image side
    shift: float = 3.0  # augmentation: centre offset, +- pixels
    rotate: float = 5.0  # augmentation: +- degrees
    vq_ch: int = 32
    vq_ch_mult: tuple[int, ...] = (1, 1, 2)
    vq_res_blocks: int = 1
    vocab: int = 1024
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    vq_steps: int = 1600
    vq_batch: int = 16
    vq_lr: float = 2e-3
    revive_every: int = 50  # restart codes unused for this many steps (until 80% of training)
    dec_steps: int = 1000  # then the decoder alone, on the frozen tokens (the VAR's targets do not move)
    dec_lr: float = 1e-3
    var_depth: int = 6
    var_width: int = 128
    var_steps: int = 1000
    var_batch: int = 16
    var_lr: float = 2e-3
    label_dropout: float = 0.1  # labels replaced by the null class (classifier-free guidance)
    pool: int = 8000  # renders encoded once for VAR training
    seed: int = 0
    # demo sampling (the figures are measured at these settings)
    cfg: float = 3.0
    top_k: int = 0
    top_p: float = 0.8

    def augment(self) -> Augment:
        return Augment(size=self.size, shift=self.shift, rotate=self.rotate)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(cfg=self.cfg, top_k=self.top_k, top_p=self.top_p)

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
            num_classes=len(EMOJI),
            vocab_size=self.vocab,
            latent_channels=32,
            name="var-demo",
        )


PRESETS = {
    "cpu": Recipe(),
    # a GPU run: wider models, more steps and a larger pool, same data and schedule
    "gpu": Recipe(
        vq_ch=64,
        vq_ch_mult=(1, 2, 2),
        vq_res_blocks=2,
        vq_steps=6000,
        vq_batch=64,
        var_depth=8,
        var_width=256,
        var_steps=6000,
        var_batch=64,
        pool=60000,
    ),
}


# ------------------------------------------------------------------------------------------ helpers
def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + peak * 0.05 * 0.5


class Log:
    """JSON lines on stdout, kept for train_log.json; wall and process (CPU) minutes on every row."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.t0, self.c0 = time.time(), time.process_time()

    def minutes(self) -> tuple[float, float]:
        return round((time.time() - self.t0) / 60, 2), round((time.process_time() - self.c0) / 60, 2)

    def __call__(self, **row) -> None:
        row["minutes"], row["cpu_minutes"] = self.minutes()
        self.rows.append(row)
        print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------ stage 1
def train_vqvae(recipe: Recipe, data: EmojiRenders, device: torch.device, log: Log) -> VQVAE:
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
        q = model.quantize.forward_train(model.encode_latent(x * 2 - 1))
        y = model.decoder(model.post_quant_conv(q.f_hat)).add(1).mul(0.5)
        loss = F.mse_loss(y, x) + 0.2 * (y - x).abs().mean() + q.loss
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
                vq=round(q.loss.item(), 5),
                psnr=round(demo_eval.psnr(y.detach().clamp(0, 1).cpu(), x.cpu()), 2),
                dead_codes=dead_count,
            )
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _revive_codes(model: VQVAE, residuals: torch.Tensor, dead: torch.Tensor, g: torch.Generator) -> None:
    """Unused codes restart at residual vectors just quantized (keeps the whole codebook alive)."""
    pick = torch.randint(0, residuals.shape[0], (len(dead),), generator=g).to(residuals.device)
    noise = torch.randn(residuals[pick].shape, generator=g).to(residuals.device)
    model.quantize.embedding.weight[dead] = residuals[pick] + 0.01 * noise


def finetune_decoder(recipe: Recipe, vqvae: VQVAE, data: EmojiRenders, device: torch.device, log: Log) -> VQVAE:
    """More steps for the decoder only: encoder, codebook and Phis stay as they are, so the tokens
    (and with them the VAR's training data) are the same whether this runs before or after the VAR."""
    g = torch.Generator().manual_seed(recipe.seed + 4)
    torch.manual_seed(recipe.seed + 4)
    params = [*vqvae.decoder.parameters(), *vqvae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    vqvae.decoder.train()
    opt = torch.optim.AdamW(params, lr=recipe.dec_lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(recipe.dec_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.dec_steps, recipe.dec_lr)
        x, _ = data.sample(recipe.vq_batch, g)
        x = x.to(device)
        with torch.no_grad():
            f_hat = vqvae.quantize.indices_to_fhat(vqvae.img_to_indices(x))
        y = vqvae.decoder(vqvae.post_quant_conv(f_hat)).add(1).mul(0.5)
        loss = F.mse_loss(y, x) + 0.2 * (y - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        if (step + 1) % 100 == 0:
            psnr = demo_eval.psnr(y.detach().clamp(0, 1).cpu(), x.cpu())
            log(stage="decoder", step=step + 1, loss=round(loss.item(), 5), psnr=round(psnr, 2))
    return vqvae.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ stage 2
@torch.no_grad()
def encode_pool(
    model: VQVAE, data: EmojiRenders, n: int, seed: int, device: torch.device
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


def train_var(recipe: Recipe, vqvae: VQVAE, pool, held, device: torch.device, log: Log) -> VAR:
    g = torch.Generator().manual_seed(recipe.seed + 1)
    torch.manual_seed(recipe.seed + 1)
    cfg = recipe.var_config()
    model = VAR(cfg).init_weights(recipe.seed).to(device).train()
    decayed = lambda n, p: p.ndim >= 2 and "pos_" not in n and "emb" not in n  # noqa: E731
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if decayed(n, p)], "weight_decay": 0.05},
            {"params": [p for n, p in model.named_parameters() if not decayed(n, p)], "weight_decay": 0.0},
        ],
        lr=recipe.var_lr,
        betas=(0.9, 0.95),
    )
    quant = vqvae.quantize
    idx_pool, labels_pool = pool
    for step in range(recipe.var_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.var_steps, recipe.var_lr, warmup=100)
        pick = torch.randint(0, labels_pool.shape[0], (recipe.var_batch,), generator=g)
        idx = [p[pick].long().to(device) for p in idx_pool]
        drop = torch.rand(recipe.var_batch, generator=g) < recipe.label_dropout
        labels = torch.where(drop, cfg.null_class, labels_pool[pick]).to(device)
        with torch.no_grad():
            x_in = quant.teacher_inputs(idx)
        logits = model(labels, x_in)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.cat(idx, 1).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        if (step + 1) % 50 == 0:
            log(
                stage="var",
                step=step + 1,
                loss=round(loss.item(), 4),
                held_out=round(held_out_loss(model, quant, held, device), 4),
            )
    return model.eval().requires_grad_(False)


@torch.no_grad()
def held_out_loss(model: VAR, quant, held, device: torch.device, n: int = 128) -> float:
    was = model.training
    model.eval()
    idx_all, labels = held
    idx = [p[:n].long().to(device) for p in idx_all]
    logits = model(labels[:n].to(device), quant.teacher_inputs(idx))
    model.train(was)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.cat(idx, 1).reshape(-1)).item()


# ------------------------------------------------------------------------------------------ saving
HALF_EXEMPT = ("ema_vocab",)  # training statistics stay fp32


@torch.no_grad()
def round_to_half(model: torch.nn.Module) -> torch.nn.Module:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not any(x in name for x in HALF_EXEMPT):
            t.copy_(t.half().float())
    return model


def save_half(state: dict, path: Path, config: dict) -> None:
    half = {
        k: v.half() if v.is_floating_point() and not any(x in k for x in HALF_EXEMPT) else v for k, v in state.items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors({k: v.cpu() for k, v in half.items()}, tmp, config)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------ figures
#: seed sets: A chooses the demo's sampling (--stage sweep), B reports at it (fresh samples)
SEEDS_A, SEEDS_B = 1000, 5000
CONSISTENCY_PER_CLASS = 10
SWEEP = [(cfg, top_p) for cfg in (1.5, 2.0, 3.0, 4.0, 5.0) for top_p in (0.6, 0.8, 0.95)]


def vqvae_metrics(recipe: Recipe, vqvae: VQVAE, data: EmojiRenders, device: torch.device) -> dict:
    """PSNR on renders never trained on: fresh augmentations of the classes, and unseen emoji."""
    held_x, _ = data.sample(512, torch.Generator().manual_seed(12345))
    unseen_x, _ = EmojiRenders(UNSEEN, recipe.image, recipe.augment()).sample(256, torch.Generator().manual_seed(54321))
    return {
        "vqvae_psnr_heldout_renders": round(demo_eval.psnr(demo_eval.reconstruct(vqvae, held_x, device), held_x), 2),
        "vqvae_psnr_unseen_emoji": round(demo_eval.psnr(demo_eval.reconstruct(vqvae, unseen_x, device), unseen_x), 2),
    }


def var_metrics(recipe: Recipe, var: VAR, vqvae: VQVAE, data: EmojiRenders, held, log: Log) -> dict:
    device = var.head.weight.device
    sampling = recipe.sampling()
    metrics = {
        "var_heldout_cross_entropy": round(held_out_loss(var, vqvae.quantize, held, device, n=256), 4),
        "uniform_cross_entropy": round(math.log(recipe.vocab), 4),
    }
    for cfg in (1.0, 2.0, 4.0):
        s = dataclasses.replace(sampling, cfg=cfg)
        cc = demo_eval.class_consistency(var, vqvae, data, s, CONSISTENCY_PER_CLASS, seed=SEEDS_B)
        metrics[f"class_consistency_cfg{cfg:g}"] = cc["consistency"]
    cc = demo_eval.class_consistency(var, vqvae, data, sampling, CONSISTENCY_PER_CLASS, seed=SEEDS_B)
    metrics["class_consistency_demo_sampling"] = cc["consistency"]
    metrics["class_consistency_standard_error"] = cc["standard_error"]
    metrics["class_consistency_chance"] = cc["chance"]
    metrics["class_consistency_per_class"] = {k: round(v, 2) for k, v in cc["per_class"].items()}
    metrics["class_consistency_note"] = (
        f"share of samples whose nearest training render (pixel L2 on {demo_eval.THUMB}x{demo_eval.THUMB} "
        f"thumbnails, {demo_eval.BANK_PER_CLASS} renders per class) is of the class they were sampled for; "
        f"{CONSISTENCY_PER_CLASS} samples x {len(EMOJI)} classes from seeds {SEEDS_B}+ (a set not used to "
        f"choose the sampling); chance {cc['chance']}; cfg1/2/4 at top_k {recipe.top_k}, top_p {recipe.top_p}"
    )
    log(stage="var-eval", **{k: v for k, v in metrics.items() if not isinstance(v, dict | str)})
    metrics["scale_confidence"] = demo_eval.confidence(var, vqvae, len(EMOJI), sampling, range(SEEDS_B, SEEDS_B + 4))
    metrics["scale_confidence_note"] = (
        "per scale, at the demo's sampling, full plan, 4 seeds x one sample per class: p_sampled = mean "
        "probability of the drawn token under the distribution it was drawn from (CFG-mixed, top-k/top-p "
        "filtered, renormalised); entropy = mean entropy (nats) of the CFG-mixed distribution before the "
        f"filters (uniform: {math.log(recipe.vocab):.2f}); entropy_sampled = the same after the filters"
    )
    log(stage="confidence", scales=metrics["scale_confidence"])
    return metrics


def sweep(recipe: Recipe, var: VAR, vqvae: VQVAE, data: EmojiRenders, log: Log) -> None:
    for cfg, top_p in SWEEP:
        s = SamplingConfig(cfg=cfg, top_k=recipe.top_k, top_p=top_p)
        cc = demo_eval.class_consistency(var, vqvae, data, s, CONSISTENCY_PER_CLASS, seed=SEEDS_A)
        log(stage="sweep", cfg=cfg, top_k=recipe.top_k, top_p=top_p, consistency=cc["consistency"])


def write_demo(recipe: Recipe, out: Path, metrics: dict, trained_with: dict) -> None:
    demo = {
        "classes": [name for name, _ in EMOJI],
        "emoji": [f"U+{code:04X}" for _, code in EMOJI],
        "sampling": {"cfg": recipe.cfg, "top_k": recipe.top_k, "top_p": recipe.top_p},
        "recipe": dataclasses.asdict(recipe),
        "metrics": metrics,
        "trained_with": trained_with,
    }
    tmp = out / "demo.json.tmp"
    tmp.write_text(json.dumps(demo, indent=1))
    tmp.replace(out / "demo.json")


# ------------------------------------------------------------------------------------------ main
def parse_recipe(recipe: Recipe, overrides: list[str]) -> Recipe:
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(Recipe)}:
            raise SystemExit(f"--set {item}: no recipe field {key!r}")
        kind = type(getattr(recipe, key))
        recipe = dataclasses.replace(recipe, **{key: tuple(json.loads(value)) if kind is tuple else kind(value)})
    return recipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2: the committed model's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    p.add_argument("--stage", choices=["all", "vqvae", "var", "decoder", "eval", "sweep"], default="all")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = PRESETS[args.preset]
    if args.stage in ("decoder", "eval", "sweep") and (args.out / "demo.json").exists():
        saved = json.loads((args.out / "demo.json").read_text())["recipe"]  # the checkpoints' own recipe
        recipe = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    recipe = parse_recipe(recipe, args.set)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log()
    data = EmojiRenders(EMOJI, recipe.image, recipe.augment())
    if args.stage == "decoder":
        return resume_decoder(recipe, out, data, device, log)
    if args.stage in ("eval", "sweep"):
        return evaluate_saved(recipe, out, data, device, log, sweep_only=args.stage == "sweep")

    log(stage="start", recipe=dataclasses.asdict(recipe), torch=torch.__version__, device=str(device),
        threads=args.threads, font_sha256=font_sha256(), stage_run=args.stage)  # fmt: skip
    if args.stage == "var":
        vqvae = trained_vqvae(recipe, out, device)
        metrics = vqvae_metrics(recipe, vqvae, data, device)
        log(stage="vqvae-eval", **metrics)
    else:
        # the demo ships fp16 weights: each stage is rounded and saved as soon as it is trained, and
        # every figure is of the shipped weights
        vqvae = round_to_half(train_vqvae(recipe, data, device, log))
        vqvae, metrics = decoder_stage(recipe, vqvae, data, device, log, out)
    vq_minutes = log.minutes()
    if args.stage == "vqvae":
        return 0

    pool = encode_pool(vqvae, data, recipe.pool, recipe.seed + 2, device)
    held = encode_pool(vqvae, data, 256, recipe.seed + 3, device)
    log(stage="pool", renders=recipe.pool)
    var = round_to_half(train_var(recipe, vqvae, pool, held, device, log))
    save_half(var.state_dict(), out / "var.safetensors", {"var": var.cfg.to_dict()})
    train_minutes = log.minutes()
    (out / "train_log.json").write_text(json.dumps(log.rows, indent=0))  # again, with the figures, at the end
    metrics.update(var_metrics(recipe, var, vqvae, data, held, log))
    demo_eval.save_grid(var, vqvae, data.names, recipe.sampling(), out / "samples.png", per_class=8)
    trained_with = {
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "font": "fonts-noto-color-emoji, NotoColorEmoji.ttf sha256 " + font_sha256(),
        "minutes_vqvae": vq_minutes[0],
        "minutes_training": train_minutes[0],
        "cpu_minutes_training": train_minutes[1],
        "minutes_total": log.minutes()[0],
        "command": "python tools/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_demo(recipe, out, metrics, trained_with)
    (out / "train_log.json").write_text(json.dumps(log.rows, indent=0))
    log(stage="done", out=str(out))
    return 0


def decoder_stage(recipe: Recipe, vqvae: VQVAE, data: EmojiRenders, device: torch.device, log: Log, out: Path):
    """The decoder-only steps (when the recipe has any), then the shipped VQVAE and its figures."""
    metrics = vqvae_metrics(recipe, vqvae, data, device)
    log(stage="vqvae-eval", **metrics)
    if recipe.dec_steps:
        metrics = {f"{k}_before_decoder_steps": v for k, v in metrics.items()}
        vqvae = round_to_half(finetune_decoder(recipe, vqvae, data, device, log))
        metrics.update(vqvae_metrics(recipe, vqvae, data, device))
        log(stage="decoder-eval", **metrics)
    save_half(vqvae.state_dict(), out / "vqvae.safetensors", {"vqvae": vqvae.cfg.to_dict()})
    return vqvae, metrics


def trained_vqvae(recipe: Recipe, out: Path, device: torch.device) -> VQVAE:
    """``--stage var``: the VQVAE that ``--stage vqvae`` (same recipe) left in ``out``.

    fp16 on disk equals the rounded model in memory, and the VAR's tokens come from the encoder and
    codebook alone, so the VAR trained on it is the one a whole run trains (tested)."""
    from varrt.export.checkpoint import load_vqvae

    path = out / "vqvae.safetensors"
    if not path.exists():
        raise SystemExit(f"--stage var: {path} is missing; train it first with --stage vqvae --out {out}")
    vqvae = load_vqvae(path, patch_nums=recipe.patch_nums, device=device)
    if vqvae.cfg != recipe.vqvae_config():
        raise SystemExit(f"--stage var: {path} is not this recipe's VQVAE; pass the --preset/--set it was trained with")
    return vqvae


def resume_decoder(recipe: Recipe, out: Path, data: EmojiRenders, device: torch.device, log: Log) -> int:
    """``--stage decoder``: the decoder-only steps on the VQVAE in ``out`` (trained without them).

    The result equals a run with these steps from the start (the tokens do not depend on the
    decoder): demo.json and train_log.json get the new figures and log rows."""
    from varrt.export.checkpoint import load_vqvae

    vqvae = load_vqvae(out / "vqvae.safetensors", patch_nums=recipe.patch_nums, device=device)
    _, metrics = decoder_stage(recipe, vqvae, data, device, log, out)
    if (out / "demo.json").exists():
        demo = json.loads((out / "demo.json").read_text())
        demo["recipe"] = dataclasses.asdict(recipe)
        demo["metrics"] = {**metrics, **{k: v for k, v in demo["metrics"].items() if not k.startswith("vqvae_")}}
        demo["metrics_note"] = "VAR figures of the decoder before these steps: run --stage eval"
        demo["trained_with"]["minutes_decoder_steps"] = log.minutes()[0]
        (out / "demo.json").write_text(json.dumps(demo, indent=1))
    rows = json.loads((out / "train_log.json").read_text()) if (out / "train_log.json").exists() else []
    (out / "train_log.json").write_text(json.dumps(rows + log.rows, indent=0))
    return 0


def evaluate_saved(recipe: Recipe, out: Path, data: EmojiRenders, device: torch.device, log: Log, sweep_only: bool):
    """The figures of the checkpoints already in ``out`` (demo.json keeps its trained_with)."""
    var, vqvae = load_models(out / "var.safetensors", out / "vqvae.safetensors", device=device)
    if sweep_only:
        sweep(recipe, var, vqvae, data, log)
        return 0
    held = encode_pool(vqvae, data, 256, recipe.seed + 3, device)
    metrics = {**vqvae_metrics(recipe, vqvae, data, device), **var_metrics(recipe, var, vqvae, data, held, log)}
    demo_eval.save_grid(var, vqvae, data.names, recipe.sampling(), out / "samples.png", per_class=8)
    old = json.loads((out / "demo.json").read_text()) if (out / "demo.json").exists() else {}
    before = {k: v for k, v in old.get("metrics", {}).items() if k.endswith("_before_decoder_steps")}
    write_demo(recipe, out, {**before, **metrics}, old.get("trained_with", {}))
    log(stage="done", out=str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
