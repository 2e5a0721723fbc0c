"""Whether the VQ-VAE decoder may run in int8: ``python tools/bench_int8_decoder.py``.

The decoder is a third of a var-d16 batch-1 generation on ONNX Runtime's CPU provider (256 px,
almost all of it Conv), and no policy touches it, so it is where an int8 export would gain next.
varrt's rule (issue 18): the decoder is int8 only if its images keep SSIM >= ``GATE`` against
the fp32 decoder's; otherwise it stays fp32. This tool measures that rule on the one model with
trained weights here, the demo model (its f_hat from real generations: calibration on one set of
seeds and classes, SSIM / PSNR on another), and the speed of each form on the demo model's decoder
and on the official ``vae_ch160v4096z32`` decoder at 256 px (random weights, calibrated on random
latents: speed only, its images say nothing).

The forms are ``onnxruntime.quantization``'s static quantization of every Conv (per output channel
weights): the symmetric s8 x s8 Q/DQ that TensorRT takes (varrt's ``int8``), and ONNX Runtime's
fast CPU form (u8 activations, 7-bit weights: varrt's ``int8-cpu`` family), each with MinMax and
Percentile calibration, and the CPU form with the first two and the last Conv kept fp32; then the
two decoders varrt's int8 / int8-cpu exports write (``export.quantize.quantize_decoder``: Percentile
at 99.99 instead of ORT's default 99.999, only the last Conv fp32), the recipe a search over
percentiles, calibrations and per-conv sensitivity found (the last Conv, which reads the SiLU after
the last norm, is the only one whose quantization alone costs more than 0.005 SSIM).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from varrt.export.configs import VQVAEConfig
from varrt.export.graphs import DecoderGraph, decoder_spec
from varrt.export.onnx_export import export_component
from varrt.export.quantize import DECODER_GATE, FeedReader, quantize_decoder, quiet_quantizer
from varrt.export.vqvae import VQVAE
from varrt.runtime.bench import provenance, provenance_lines, publish, stats
from varrt.runtime.fidelity import image_metrics, summarize

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
GATE = DECODER_GATE  # the mean SSIM vs the fp32 decoder an int8 decoder must keep (issue 18)
#: (name, TensorRT's form, calibration, fp32 edge convs): the forms first measured
FORMS = (
    ("int8 s8s8 MinMax", True, "MinMax", False),
    ("int8 s8s8 Percentile", True, "Percentile", False),
    ("int8-cpu u8s8 MinMax", False, "MinMax", False),
    ("int8-cpu u8s8 Percentile", False, "Percentile", False),
    ("int8-cpu u8s8 Percentile, edges fp32", False, "Percentile", True),
)
#: the decoders varrt's exports write (export/quantize.py: Percentile 99.99, the last conv fp32)
VARRT_FORMS = (("varrt int8 (P99.99, last conv fp32)", "int8"), ("varrt int8-cpu (P99.99, last conv fp32)", "int8-cpu"))


def export_decoder(vqvae: VQVAE, batch: int, path: Path) -> Path:
    export_component(DecoderGraph(vqvae.eval()), decoder_spec(vqvae.cfg, batch), path, opset=20)
    return path


def quantize(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], trt: bool, method: str, edges: bool) -> Path:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    convs = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "Conv"]
    CalibrationDataReader.register(FeedReader)
    with quiet_quantizer():
        quantize_static(
            src,
            dst,
            FeedReader(feeds, ["f_hat"]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=convs[:2] + convs[-1:] if edges else [],
            per_channel=True,
            reduce_range=not trt,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            use_external_data_format=True,
            extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True},
        )
    return dst


def session(path: Path, threads: int | None):
    from varrt.engines.ort_engine import _import_ort, session_options

    return _import_ort().InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def demo_latents(pipe, batch: int, generations: int, seed0: int) -> list[np.ndarray]:
    """f_hat of real demo generations: ``generations`` batches of ``batch`` consecutive classes."""
    n = pipe.engine.var_config.num_classes
    out = []
    for g in range(generations):
        labels = [(g * batch + j) % n for j in range(batch)]
        out.append(pipe.generate(labels, seed=[seed0 + g * batch + j for j in range(batch)]).f_hat.numpy())
    return out


def timed(sessions: dict[str, object], x: np.ndarray, warmup: int, repeat: int) -> dict[str, dict]:
    """Seconds per call of each form, the forms interleaved in every repeat."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(warmup + repeat):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"f_hat": x})
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: stats(v) for k, v in times.items()}


def measure_model(name, vqvae, cal, test, tmp: Path, args, fidelity: bool, say) -> dict:
    say(f"{name}: export the fp32 decoder (batch {cal[0].shape[0]})")
    fp32 = export_decoder(vqvae, cal[0].shape[0], tmp / f"{name}-fp32.onnx")
    paths = {"fp32": fp32}
    for form, trt, method, edges in FORMS:
        say(f"{name}: quantize {form}")
        paths[form] = quantize(fp32, tmp / f"{name}-{len(paths)}.onnx", [{"f_hat": f} for f in cal], trt, method, edges)
    for form, precision in VARRT_FORMS:
        say(f"{name}: quantize {form}")
        paths[form] = tmp / f"{name}-{len(paths)}.onnx"
        quantize_decoder(fp32, paths[form], precision, [{"f_hat": f} for f in cal])
    sessions = {k: session(p, args.threads) for k, p in paths.items()}
    say(f"{name}: time {len(sessions)} forms ({args.warmup} warm-up, {args.repeat} repeats, interleaved)")
    speed = timed(sessions, test[0], args.warmup, args.repeat)
    ref = np.concatenate([sessions["fp32"].run(None, {"f_hat": f})[0] for f in test]) if fidelity else None
    forms = {}
    for k, s in sessions.items():
        row = {"seconds": speed[k], "speedup_vs_fp32": speed["fp32"]["median"] / speed[k]["median"]}
        if fidelity and k != "fp32":
            img = np.concatenate([s.run(None, {"f_hat": f})[0] for f in test])
            ssim, psnr = image_metrics(torch.from_numpy(ref), torch.from_numpy(img))
            row.update(ssim=summarize(ssim), psnr=summarize(psnr), passes_gate=bool(ssim.mean() >= GATE))
        forms[k] = row
    side = vqvae.cfg.patch_nums[-1]
    return {
        "model": name,
        "image_px": side * vqvae.cfg.downsample,
        "batch": int(cal[0].shape[0]),
        "calibration_batches": len(cal),
        "test_batches": len(test),
        "forms": forms,
    }


def markdown(report: dict) -> str:
    lines = [
        "# The VQ-VAE decoder in int8: fidelity gate and speed",
        "",
        *provenance_lines(report),
        f"- gate: the decoder runs int8 only if the mean SSIM of its images vs the fp32 decoder's is >= {GATE}",
        "- speed: seconds per decoder call on ONNX Runtime's CPU provider, the forms interleaved; "
        f"warm-up {report['warmup']}, repeats {report['repeat']}",
        "",
    ]
    for m in report["models"]:
        lines += [f"## {m['model']} ({m['image_px']} px, batch {m['batch']}) — {m['weights']}", ""]
        if m["fidelity"]:
            lines.append(
                f"Calibration: {m['calibration_batches']} batches of real f_hat (seeds from 0); SSIM / PSNR on "
                f"{m['test_batches']} other batches (seeds from 1000), each image against the fp32 decoder's."
            )
        else:
            lines.append("Random weights, calibrated on random latents: speed only (no fidelity from random weights).")
        lines += [
            "",
            "| form | s / call | speed-up vs fp32 | SSIM mean | SSIM min | PSNR dB | gate |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, r in m["forms"].items():
            s = r["seconds"]
            sec = f"{s['median']:.3f} ({s['p10']:.3f}-{s['p90']:.3f})"
            if "ssim" in r:
                fid = f"{r['ssim']['mean']:.4f} | {r['ssim']['min']:.4f} | {r['psnr']['mean']:.2f} | "
                fid += "passes" if r["passes_gate"] else "fails"
            else:
                fid = "- | - | - | -"
            lines.append(f"| {k} | {sec} | {r['speedup_vs_fp32']:.2f}x | {fid} |")
        lines.append("")
    passing = [k for m in report["models"] if m["fidelity"] for k, r in m["forms"].items() if r.get("passes_gate")]
    lines.append(
        "Verdict: "
        + (
            f"{', '.join(passing)} {'passes' if len(passing) == 1 else 'pass'} the gate."
            if passing
            else "no int8 form passes the gate on the demo model."
        )
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--calibrate", type=int, default=4, help="calibration batches of 8 demo images (default 4)")
    p.add_argument("--test", type=int, default=4, help="test batches of 8 demo images (default 4)")
    p.add_argument("--no-d16", action="store_true", help="skip the 256 px vae_ch160v4096z32 decoder")
    p.add_argument("--name", default="int8-decoder")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if min(args.repeat, args.calibrate, args.test) < 1 or args.warmup < 0:
        print("--repeat, --calibrate and --test must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from varrt.runtime.pipeline import Pipeline

    models = []
    with tempfile.TemporaryDirectory() as tmp:
        say("demo model: generate the calibration and test latents")
        pipe = Pipeline.demo(backend="torch")
        cal, test = demo_latents(pipe, 8, args.calibrate, 0), demo_latents(pipe, 8, args.test, 1000)
        models.append(
            {
                **measure_model("var-demo", pipe.engine.vqvae, cal, test, Path(tmp), args, True, say),
                "fidelity": True,
                "weights": "demo model (trained on colour emoji)",
            }
        )
        if not args.no_d16:
            torch.manual_seed(0)
            big = VQVAE(VQVAEConfig()).eval()
            rng = np.random.default_rng(0)
            side = big.cfg.patch_nums[-1]
            cal = [rng.standard_normal((1, big.cfg.z_channels, side, side)).astype(np.float32) for _ in range(2)]
            models.append(
                {
                    **measure_model("vae_ch160v4096z32", big, cal, cal[:1], Path(tmp), args, False, say),
                    "fidelity": False,
                    "weights": "random weights",
                }
            )
    report = {**provenance(args.warmup, args.repeat), "gate_ssim": GATE, "models": models}
    publish(args.out_dir / args.name, report, markdown(report), say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
