"""Quantized graphs against fp32, side by side in one run: torch eager fp32, ORT fp32, ORT int8.

    python tools/bench_quantized.py --name demo-int8-b10 --batch 10 --policy stagevar --policy skipvar
    python tools/bench_quantized.py --random-weights --model var-d16 --batch 1 --name var-d16-int8-b1 ...

Latency: ``varrt bench``'s interleaved loop (runtime/bench.py) over the three pipelines, the full plan
and the given policies; ratios are taken between the medians of that one run. Fidelity, only when
the weights mean something: per-scale token agreement of the int8 full plan with the fp32 full plan
(same seeds and classes, free-running), and SSIM / PSNR of its images against fp32 full beside the
policies' (both on ONNX Runtime fp32). Numerics at any size (random weights too): the int8 graph's
logits error per scale against fp32, teacher-forced (both fed the fp32 run's inputs). JSON +
markdown go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from varrt.export.exporter import ExportConfig
from varrt.export.graphs import GraphSpec
from varrt.export.quantize import DECODER_MODES
from varrt.runtime.bench import BenchConfig, per_scale_table, provenance_lines, publish, run_bench
from varrt.runtime.evaluate import evaluate
from varrt.runtime.fidelity import image_metrics, summarize
from varrt.runtime.pipeline import ExportOptions, Pipeline
from varrt.runtime.weights import Weights


class TeacherForced:
    """The reference engine, with the candidate run on the same feeds of every transformer call:
    the logits error per call, with no divergence of the sampled tokens in between."""

    def __init__(self, reference, candidate) -> None:
        self.reference, self.candidate = reference, candidate
        for name in ("backend", "var_config", "vqvae_config", "quantizer", "device", "precision", "kv_capacity"):
            setattr(self, name, getattr(reference, name))
        self.errors: list[dict] = []

    def has_graph(self, graph: GraphSpec) -> bool:
        return self.reference.has_graph(graph)

    def run(self, graph: GraphSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ref = self.reference.run(graph, feeds)
        if "logits" in ref:
            ref = {k: v.clone() for k, v in ref.items()}
            got = self.candidate.run(graph, feeds)["logits"].float()
            r = ref["logits"].float()
            self.errors.append(
                {
                    "graph": graph.name,
                    "max_abs_over_max_abs": float((r - got).abs().max() / r.abs().max().clamp_min(1e-12)),
                    "rms_over_rms": float((r - got).pow(2).mean().sqrt() / r.pow(2).mean().sqrt().clamp_min(1e-12)),
                    "top1_agreement": float((r.argmax(-1) == got.argmax(-1)).float().mean()),
                }
            )
        return ref


def logits_errors(fp32: Pipeline, int8: Pipeline, labels: list[int], seeds: list[int], sampling) -> list[dict]:
    """Per scale, over ``seeds``: the int8 logits error against fp32 on the fp32 run's inputs."""
    from varrt.runtime.generate import generate

    per_scale: list[list[dict]] = []
    for seed in seeds:
        engine = TeacherForced(fp32.engine, int8.engine)
        generate(engine, labels, seed=seed, sampling=sampling, capacity=fp32.engine.kv_capacity)
        for si, e in enumerate(engine.errors):
            if si == len(per_scale):
                per_scale.append([])
            per_scale[si].append(e)
    keys = ("max_abs_over_max_abs", "rms_over_rms", "top1_agreement")
    return [{k: float(np.mean([e[k] for e in es])) for k in keys} | {"n": len(es)} for es in per_scale]


def token_agreement(fp32: Pipeline, int8: Pipeline, labels: list[int], seeds: list[int], sampling) -> dict:
    """Free-running, same seed and classes: per scale, the share of tokens int8 full samples as fp32
    full does; and the images' SSIM / PSNR against fp32 full."""
    agree: list[list[float]] = []
    ssim, psnr = [], []
    for seed in seeds:
        a = fp32.generate(labels, seed=seed, sampling=sampling, policy="full")
        b = int8.generate(labels, seed=seed, sampling=sampling, policy="full")
        for si, (x, y) in enumerate(zip(a.indices, b.indices)):
            if si == len(agree):
                agree.append([])
            agree[si].append(float((x == y).float().mean()))
        s, p = image_metrics(a.images, b.images)
        ssim.extend(s.tolist())
        psnr.extend(p.tolist())
    per_scale = [float(np.mean(v)) for v in agree]
    half = max(1, len(per_scale) // 2)
    return {
        "per_scale": per_scale,
        "first_half_mean": float(np.mean(per_scale[:half])),
        "first_half_min": float(np.min(per_scale[:half])),
        "first_half_scales": half,
        "ssim": summarize(ssim),
        "psnr": summarize(psnr),
    }


def ratios(report: dict) -> dict:
    """Median end-to-end and transformer ratios between the three pipelines, per policy."""
    by = {(r["backend"], r["policy"]): r for r in report["results"]}
    policies = list(dict.fromkeys(r["policy"] for r in report["results"]))
    pairs = [("ort", "ort-int8"), ("torch", "ort-int8"), ("torch", "ort")]
    out = {}
    for p in policies:
        for a, b in pairs:
            ra, rb = by[(a, p)], by[(b, p)]
            out[f"{a}/{b} ({p})"] = {
                "end_to_end": ra["seconds"]["median"] / rb["seconds"]["median"],
                "transformer": ra["transformer_seconds"]["median"] / rb["transformer_seconds"]["median"],
            }
    return out


def calibration_line(cal: dict | None) -> str:
    if cal is None:  # int8-cpu: activation scales computed per call, nothing calibrated
        return "- calibration: none (dynamic activation quantization: scales computed on every call)"
    note = f" ({cal['note']})" if "note" in cal else ""
    return f"- calibration: {cal['generations']} generations x batch {cal['batch']}{note}"


def decoder_line(int8: dict) -> str:
    """The int8 export's decoder: its plan, and the gate's measurement where one ran."""
    plan, got = int8["recipe"].get("decoder", {}), int8.get("decoder", {})
    line = f"- decoder: {got.get('precision', 'fp32')}"
    if plan.get("plan", "fp32") != "fp32":
        line += f" ({plan['quantized']}; weights {plan['weights']}; activations {plan['activations']})"
    fid = got.get("fidelity_vs_fp32")
    if fid:
        line += (
            f"; gate: mean SSIM {fid['ssim']['mean']:.4f} (min {fid['ssim']['min']:.4f}), PSNR "
            f"{fid['psnr']['mean']:.2f} dB vs the fp32 decoder on {fid['images']} held-out images, needs "
            f">= {fid['gate_ssim']}"
        )
    elif plan.get("plan") == "fp32":
        line += f" ({plan.get('why', '')})"
    return line


def markdown(report: dict) -> str:
    model = report["model"]
    lines = [
        f"# {model['name']}: torch fp32 vs ONNX Runtime fp32 vs ONNX Runtime {report['int8'].get('precision', 'int8')}",
        "",
        *provenance_lines(report),
        f"- model: {model['name']} (depth {model['depth']}, width {model['width']}, schedule {model['schedule']}); "
        f"weights: **{model['weights']}**",
        f"- batch {report['batch']} with CFG; warm-up {report['warmup']}, repeats {report['repeat']}, interleaved; "
        "times are medians (p10-p90)",
        f"- int8: {report['int8']['recipe']['format']}; weights {report['int8']['recipe']['weights']}; "
        f"activations {report['int8']['recipe']['activations']}",
        calibration_line(report["int8"].get("calibration")),
        decoder_line(report["int8"]),
        *(
            f"- {k} artifact files: "
            + ", ".join(f"{n} {mib:.1f} MiB" for n, mib in report["int8"]["files_mib"][k].items())
            for k in ("ort", "ort-int8")
        ),
        "",
        "| backend | policy | end-to-end s | speed-up vs full | transformer s | decode ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        s, t = r["seconds"], r["transformer_seconds"]
        lines.append(
            f"| {r['backend']} | {r['policy']} | {s['median']:.3f} ({s['p10']:.3f}-{s['p90']:.3f}) | "
            f"{r['speedup_vs_full']:.2f}x | {t['median']:.3f} ({t['p10']:.3f}-{t['p90']:.3f}) | "
            f"{r['decode_ms']['median']:.0f} |"
        )
    lines += ["", "Ratios (medians of this run; > 1: the second is faster):", ""]
    lines += ["| pair (policy) | end-to-end | transformer |", "|---|---|---|"]
    lines += [f"| {k} | {v['end_to_end']:.2f}x | {v['transformer']:.2f}x |" for k, v in report["ratios"].items()]
    lines += ["", "Per-scale medians (ms):", ""]
    lines += per_scale_table(
        ("backend", "policy"), [((r["backend"], r["policy"]), r["scale_ms"], None) for r in report["results"]], 0
    )
    errs = report["logits_error"]
    lines += [
        "",
        "int8 logits vs fp32 per scale, teacher-forced (both graphs fed the fp32 run's inputs"
        + ("; random weights: numerics only)" if "random" in model["weights"] else ")"),
        "",
        "| scale | max abs err / max abs | rms err / rms | top-1 agreement |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {e['max_abs_over_max_abs']:.4f} | {e['rms_over_rms']:.4f} | {e['top1_agreement']:.4f} |"
        for i, e in enumerate(errs)
    ]
    fid = report["fidelity"]
    if fid:
        t = fid["int8_full"]
        lines += [
            "",
            f"Fidelity against ONNX Runtime fp32 `full` ({fid['seeds']} seeds x batch {report['batch']}, same seeds "
            "and classes):",
            "",
            "int8 full, token agreement with fp32 full per scale: "
            + ", ".join(f"s{i} {a:.3f}" for i, a in enumerate(t["per_scale"]))
            + f" (first {t['first_half_scales']} scales: mean {t['first_half_mean']:.3f}, min "
            f"{t['first_half_min']:.3f})",
            "",
            "| plan | SSIM mean | SSIM worst 5% | PSNR mean dB | PSNR worst 5% | images |",
            "|---|---|---|---|---|---|",
            f"| int8 full | {t['ssim']['mean']:.4f} | {t['ssim']['worst5']:.4f} | {t['psnr']['mean']:.2f} | "
            f"{t['psnr']['worst5']:.2f} | {t['ssim']['n']} |",
        ]
        for name, f in fid["policies_fp32"].items():
            if name == "full":
                continue
            lines.append(
                f"| fp32 {name} | {f['ssim']['mean']:.4f} | {f['ssim']['worst5']:.4f} | {f['psnr']['mean']:.2f} | "
                f"{f['psnr']['worst5']:.2f} | {f['ssim']['n']} |"
            )
    else:
        lines += ["", "No fidelity figures: the weights are random, and random weights say nothing about fidelity."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--model", default="var-d16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--policy", action="append", default=[])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--precision",
        choices=("int8", "int8-cpu"),
        default="int8",
        help="int8: Q/DQ, TensorRT's form; int8-cpu: ONNX Runtime's dynamic form, the fast one on a CPU",
    )
    p.add_argument("--calibrate", type=int, default=None, help="calibration generations (default: varrt's)")
    p.add_argument(
        "--decoder-precision",
        choices=DECODER_MODES,
        default="auto",
        help="the int8 export's decoder: gated int8 (auto; random weights: fp32), int8 ungated, or fp32",
    )
    p.add_argument("--fidelity-seeds", type=int, default=4)
    p.add_argument("--logits-seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", required=True)
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    weights = Weights.random_weights(args.model) if args.random_weights else Weights.demo_model()
    specs = tuple(dict.fromkeys(("full", *args.policy)))
    config = ExportConfig(precision=args.precision, calibrate=args.calibrate, decoder=args.decoder_precision)
    fp32, int8 = ExportOptions(), ExportOptions(config=config)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    pipes = {
        "torch": Pipeline.from_weights(weights, "torch", policies=specs, batch=args.batch, say=say),
        "ort": Pipeline.from_weights(weights, "ort", policies=specs, batch=args.batch, export=fp32, say=say),
        "ort-int8": Pipeline.from_weights(weights, "ort", policies=specs, batch=args.batch, export=int8, say=say),
    }
    manifests = {k: pipes[k].engine.manifest for k in ("ort", "ort-int8")}
    # what each artifact reads (a pack's shared weights.bin: the fp32 weights of every component)
    files = {k: {name: f["bytes"] for name, f in m.files.items()} for k, m in manifests.items()}
    weight_bytes = {k: sum(v.values()) for k, v in files.items()}
    labels = [i % pipes["torch"].engine.var_config.num_classes for i in range(args.batch)]
    sampling = pipes["ort"].sampling()
    config = BenchConfig(
        labels=labels, warmup=args.warmup, repeat=args.repeat, sampling=sampling, weights=weights.label
    )
    report = run_bench(pipes, specs, config, weight_bytes, say)
    report.pop("backend_ratios", None)
    report["ratios"] = ratios(report)
    report["int8"] = {
        "precision": args.precision,
        "recipe": manifests["ort-int8"].quantization["recipe"],
        "calibration": manifests["ort-int8"].quantization.get("calibration"),
        "decoder": manifests["ort-int8"].quantization.get("components", {}).get("decoder", {"precision": "fp32"}),
        "export_key": manifests["ort-int8"].export_key,
        "files_mib": {k: {name: b / 2**20 for name, b in v.items()} for k, v in files.items()},
    }
    say("logits error per scale (teacher-forced)")
    report["logits_error"] = logits_errors(
        pipes["ort"], pipes["ort-int8"], labels, list(range(2000, 2000 + args.logits_seeds)), sampling
    )
    report["fidelity"] = {}
    if not weights.random and args.fidelity_seeds:
        seeds = list(range(1000, 1000 + args.fidelity_seeds))
        say(f"fidelity over {len(seeds)} seeds")
        report["fidelity"] = {
            "seeds": len(seeds),
            "int8_full": token_agreement(pipes["ort"], pipes["ort-int8"], labels, seeds, sampling),
            "policies_fp32": evaluate(pipes["ort"], [s for s in specs if s != "full"], labels, seeds, sampling),
        }
    publish(args.out_dir / args.name, report, markdown(report), say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
