"""The VQ-VAE decoder on the CPU, every knob side by side: ``python tools/bench_decoder.py``.

The decoder is a third of a var-d16 batch-1 generation (256 px) and no policy touches it. This
measures, in one run with the variants interleaved, what the CPU backends can do with it in
float32 — ONNX Runtime at each graph optimisation level and thread count, eager torch in NCHW and
channels-last — and in bfloat16 (eager torch under CPU autocast, channels-last: oneDNN's AVX512-BF16
kernels where the CPU has them; ONNX Runtime's CPU provider has no bfloat16 Conv). Speed on the
official ``vae_ch160v4096z32`` decoder at 256 px (random weights: speed only); the bfloat16
decoder's fidelity against the fp32 one on the demo model (trained weights, real f_hat of
generated images), where issue 17's bar is SSIM >= 0.99.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_int8_decoder import demo_latents, export_decoder

from varrt.engines.ort_engine import _import_ort, session_options
from varrt.export.configs import VQVAEConfig
from varrt.export.vqvae import VQVAE
from varrt.runtime.bench import machine, provenance, provenance_lines, publish, stats
from varrt.runtime.fidelity import image_metrics, summarize

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: the bfloat16 decoder's bar (issue 17)
BF16_GATE = 0.99


def torch_decoder(vqvae: VQVAE, channels_last: bool, bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
    """One decode of an f_hat batch on eager torch, as a function of numpy arrays."""
    model = vqvae.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    def run(f_hat: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(f_hat).contiguous(memory_format=fmt)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.decode(x).float().contiguous().numpy()

    return run


def ort_decoder(path: Path, optimization: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    sess = _import_ort().InferenceSession(
        str(path), session_options(threads, optimization), providers=["CPUExecutionProvider"]
    )
    return lambda f_hat: sess.run(None, {"f_hat": f_hat})[0]


def variants(vqvae: VQVAE, onnx_path: Path, cores: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    out = {f"ort fp32, optimisation {o}, {cores} threads": ort_decoder(onnx_path, o, cores) for o in ("all", "basic")}
    if cores > 1:
        out["ort fp32, optimisation all, 1 thread"] = ort_decoder(onnx_path, "all", 1)
    out["torch fp32 NCHW"] = torch_decoder(vqvae, False, False)
    out["torch fp32 channels-last"] = torch_decoder(vqvae, True, False)
    out["torch bf16 channels-last"] = torch_decoder(vqvae, True, True)
    return out


def timed(runs: dict[str, Callable], x: np.ndarray, warmup: int, repeat: int) -> dict[str, dict]:
    """Seconds per decode of each variant, the variants interleaved in every repeat (the order
    reversed every other repeat)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(warmup + repeat):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            runs[k](x)
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: stats(v) for k, v in times.items()}


def fidelity(runs: dict[str, Callable], reference: str, latents: list[np.ndarray]) -> dict[str, dict]:
    """SSIM / PSNR of each variant's images against ``reference``'s, image by image."""
    ref = torch.from_numpy(np.concatenate([runs[reference](f) for f in latents]))
    out = {}
    for k, run in runs.items():
        if k == reference:
            continue
        img = torch.from_numpy(np.concatenate([run(f) for f in latents]))
        ssim, psnr = image_metrics(ref, img)
        out[k] = {"ssim": summarize(ssim), "psnr": summarize(psnr), "max_abs": float((img - ref).abs().max())}
    return out


def markdown(report: dict) -> str:
    lines = [
        "# The VQ-VAE decoder on the CPU: ONNX Runtime's knobs, torch's layouts, bfloat16",
        "",
        *provenance_lines(report),
        f"- CPU flags: {', '.join(report['machine']['cpu_flags'])}",
        f"- speed: seconds per decode, variants interleaved; warm-up {report['warmup']}, repeats {report['repeat']}",
        "",
        f"## Speed: {report['speed']['model']} at {report['speed']['image_px']} px, batch 1 — **random weights**",
        "",
        "| variant | s / decode | speed-up vs the first |",
        "|---|---|---|",
    ]
    rows = report["speed"]["variants"]
    base = next(
        v["median"] for k, v in rows.items() if k.startswith("ort fp32, optimisation all") and "1 thread" not in k
    )
    for k, s in rows.items():
        lines.append(f"| {k} | {s['median']:.3f} ({s['p10']:.3f}-{s['p90']:.3f}) | {base / s['median']:.2f}x |")
    f = report["fidelity"]
    lines += [
        "",
        f"## Fidelity against ORT fp32: demo model ({f['image_px']} px), {f['images']} images — trained weights",
        "",
        "| variant | SSIM mean | SSIM min | PSNR mean dB | max abs |",
        "|---|---|---|---|---|",
    ]
    for k, r in f["variants"].items():
        lines.append(
            f"| {k} | {r['ssim']['mean']:.4f} | {r['ssim']['min']:.4f} | {r['psnr']['mean']:.2f} | {r['max_abs']:.4f} |"
        )
    bf = f["variants"]["torch bf16 channels-last"]["ssim"]["mean"]
    verdict = "passes" if bf >= BF16_GATE else "fails"
    lines += ["", f"bfloat16 against the bar SSIM >= {BF16_GATE}: {verdict} ({bf:.4f})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--images", type=int, default=4, help="batches of 8 demo images for the fidelity (default 4)")
    p.add_argument("--name", default="decoder-cpu")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if min(args.repeat, args.images) < 1 or args.warmup < 0:
        print("--repeat and --images must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from varrt.runtime.pipeline import Pipeline

    cores = torch.get_num_threads()
    if "avx512_bf16" not in machine()["cpu_flags"]:
        say("note: this CPU lacks AVX512-BF16; torch's bfloat16 decoder runs without bf16 instructions here")
    with tempfile.TemporaryDirectory() as tmp:
        say("demo model: generate real latents")
        pipe = Pipeline.demo(backend="torch")
        demo = pipe.engine.vqvae
        latents = demo_latents(pipe, 8, args.images, 1000)
        demo_runs = variants(demo, export_decoder(demo, 8, Path(tmp) / "demo.onnx"), cores)
        say(f"demo model: fidelity of {len(demo_runs) - 1} variants against ORT fp32")
        fid = fidelity(demo_runs, next(iter(demo_runs)), latents)
        torch.manual_seed(0)
        big = VQVAE(VQVAEConfig()).eval()
        side = big.cfg.patch_nums[-1]
        x = np.random.default_rng(0).standard_normal((1, big.cfg.z_channels, side, side)).astype(np.float32)
        runs = variants(big, export_decoder(big, 1, Path(tmp) / "big.onnx"), cores)
        say(f"vae_ch160v4096z32: time {len(runs)} variants ({args.warmup} warm-up, {args.repeat} repeats)")
        speed = timed(runs, x, args.warmup, args.repeat)
    report = {
        **provenance(args.warmup, args.repeat),
        "speed": {"model": "vae_ch160v4096z32", "image_px": side * big.cfg.downsample, "variants": speed},
        "fidelity": {
            "image_px": latents[0].shape[-1] * demo.cfg.downsample,
            "images": 8 * args.images,
            "variants": fid,
        },
        "bf16_gate_ssim": BF16_GATE,
    }
    publish(args.out_dir / args.name, report, markdown(report), say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
