"""Which int8 form is fast on this CPU: ``python tools/bench_int8_forms.py``.

varrt's two int8 recipes (export/quantize.py) answer different needs: ``int8`` is the symmetric
s8 x s8 Q/DQ that TensorRT's explicit quantization takes, ``int8-cpu`` is ONNX Runtime's dynamic
form. Which one ONNX Runtime runs fast depends on the CPU's integer dot-product instructions (x86
without AVX512-VNNI multiplies u8 x s8 pairs into saturating int16 sums), so this measures both on
the machine at hand, on a stack of var-d16-size MLP blocks (width 1024, ratio 4) — the matmuls that
carry most of a VAR step's weights — at the row counts a batch-1 CFG generation feeds them
(2 x the tokens of a scale). It also runs ``int8-cpu`` with full 8-bit weights, to show what the
7-bit weights (``reduce_range``) buy. Weights and inputs are random: the errors compare the forms'
numerics with each other, they are not a fidelity figure. JSON + markdown go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from varrt.export.configs import var_config
from varrt.export.quantize import quantize_component
from varrt.runtime.bench import provenance, provenance_lines, stats, write_results

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: rows of a batch-1 CFG step at var-d16's scales 1, 2, 4, 6, 8, 10 (2 x tokens)
ROWS = (2, 8, 32, 128, 338, 512)
FORMS = ("fp32", "int8", "int8-cpu", "int8-cpu 8-bit weights")


class MLPStack(nn.Module):
    """``blocks`` residual MLPs of width ``width`` (fc1, GELU, fc2), as in a VAR block."""

    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mlp in self.mlps:
            x = x + mlp(x)
        return x


def build_forms(tmp: Path, width: int, blocks: int, seed: int) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(seed)
    model = MLPStack(width, blocks).eval()
    fp32 = tmp / "fp32.onnx"
    x = torch.randn(1, 64, width)
    torch.onnx.export(
        model, (x,), str(fp32), input_names=["x"], output_names=["y"], dynamic_axes={"x": {1: "rows"}}, dynamo=False
    )
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.standard_normal((1, r, width), dtype=np.float32)} for r in ROWS]
    paths = {"fp32": fp32}
    for form in ("int8", "int8-cpu"):
        paths[form] = tmp / f"{form}.onnx"
        quantize_component(fp32, paths[form], form, feeds)
    # the dynamic form with full-range weights: what reduce_range avoids (not a varrt precision)
    paths["int8-cpu 8-bit weights"] = tmp / "int8-cpu-8bit.onnx"
    quantize_dynamic(
        fp32,
        paths["int8-cpu 8-bit weights"],
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    return paths


def measure(paths: dict[str, Path], width: int, warmup: int, repeat: int, threads: int | None, seed: int) -> list:
    from varrt.engines.ort_engine import _import_ort, session_options

    ort = _import_ort()
    sessions = {
        f: ort.InferenceSession(str(p), session_options(threads), providers=["CPUExecutionProvider"])
        for f, p in paths.items()
    }
    rng = np.random.default_rng(seed + 1)
    rows_out = []
    for rows in ROWS:
        x = {"x": rng.standard_normal((1, rows, width), dtype=np.float32)}
        ref = sessions["fp32"].run(None, x)[0]
        times: dict[str, list[float]] = {f: [] for f in sessions}
        order = list(sessions)
        for rep in range(warmup + repeat):
            for form in order if rep % 2 == 0 else order[::-1]:  # alternate: drift hits every form alike
                t0 = time.perf_counter()
                sessions[form].run(None, x)
                if rep >= warmup:
                    times[form].append(time.perf_counter() - t0)
        row = {"rows": rows, "forms": {}}
        for form, sess in sessions.items():
            err = float(np.abs(sess.run(None, x)[0] - ref).mean() / np.abs(ref).mean())
            row["forms"][form] = {
                "ms": stats(np.array(times[form]) * 1e3),
                "speedup_vs_fp32": stats([a / b for a, b in zip(times["fp32"], times[form])]),
                "relative_error": err,
            }
        rows_out.append(row)
    return rows_out


def markdown(report: dict) -> str:
    lines = [
        "# int8 forms on ONNX Runtime's CPU provider",
        "",
        *provenance_lines(report),
        f"- model: {report['blocks']} residual MLP blocks of width {report['width']} (var-d16's), **random weights "
        "and inputs** (errors compare the forms' numerics, not fidelity)",
        f"- CPU flags: {', '.join(report['machine']['cpu_flags']) or 'none of those that matter for int8'}",
        f"- warm-up {report['warmup']}, repeats {report['repeat']}, forms alternating; ms median (p10-p90); "
        "speed-up per repeat vs fp32; error = mean |y - y_fp32| / mean |y_fp32|",
        "",
        "| rows | " + " | ".join(report["forms"]) + " |",
        "|---|" + "---|" * len(report["forms"]),
    ]
    for r in report["results"]:
        cells = []
        for form in report["forms"]:
            f = r["forms"][form]
            up = f["speedup_vs_fp32"]
            cells.append(
                f"{f['ms']['median']:.1f} ms, {up['median']:.2f}x ({up['p10']:.2f}-{up['p90']:.2f}), "
                f"err {100 * f['relative_error']:.1f} %"
            )
        lines.append(f"| {r['rows']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="int8-forms-d16-mlp")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.blocks < 1 or args.repeat < 1 or args.warmup < 0:
        print("--blocks and --repeat must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    width = var_config("var-d16").width
    with tempfile.TemporaryDirectory() as tmp:
        print(f"quantizing {args.blocks} MLP blocks of width {width} in {len(FORMS)} forms", file=sys.stderr)
        paths = build_forms(Path(tmp), width, args.blocks, args.seed)
        results = measure(paths, width, args.warmup, args.repeat, args.threads, args.seed)
    report = {
        **provenance(args.warmup, args.repeat),
        "width": width,
        "blocks": args.blocks,
        "forms": list(FORMS),
        "results": results,
    }
    stem = args.out_dir / args.name
    text = markdown(report)
    paths_out = write_results(stem, {".json": json.dumps(report, indent=1), ".md": text})
    print(text)
    print("wrote " + ", ".join(str(x) for x in paths_out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
