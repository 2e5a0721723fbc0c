"""One-shot GPU check of the compiled path: run once on a machine with torch + CUDA (no TensorRT,
no internet needed); it writes ``results.json`` and ``summary.md`` under ``--out`` ($OUT).

    python tools/gpu_check.py --out "$OUT"            # on the GPU machine (tools/gpu_check.sh wraps it)
    python tools/gpu_check.py --out /tmp/x --dry-run  # on a CPU: the eager engine stands in (a test)

Sections, each timed against ``--budget-s`` (a section that would start past it is recorded as
skipped, so one call fits in 8 minutes):

1. parity: torch-graph vs eager torch on the same GPU and generator, tokens compared at every
   scale, for each precision x batch x CFG (on; off from the middle scale on), on the first
   generation (eager warm-up + capture) and the second (replay).
2. captures: a policy that splits the batch (two plans), several generations; the number of
   captured CUDA graphs and persistent buffers after each (they must not grow after the first).
3. timings: per-scale wall time (synchronised), eager vs torch-graph alternated in one run,
   at ``--model`` size (default var-d16) with random weights perturbed so that blocks are not
   near the identity; warm-up and repeats, median and spread; peak memory of each engine.
4. tensorrt: only when TensorRT imports: a tiny export built with TF32 off, per-graph numerics
   and tokens vs eager torch on the GPU.
5. infinity_parity, infinity_timings: the same two checks for Infinity (``--infinity-model``,
   default infinity-2b in bf16; ``tools/gpu_check_infinity.py``).

Random weights: timings and parity only; they say nothing about image fidelity.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny models for the TensorRT section
sys.path.insert(0, str(ROOT / "tools"))  # the Infinity sections

import gpu_check_infinity as infinity  # noqa: E402
from gpu_timing import side_by_side, table_lines  # noqa: E402

from varrt.engines.cuda_graphs import BufferPool  # noqa: E402
from varrt.engines.torch_engine import TorchEngine  # noqa: E402
from varrt.export.checkpoint import perturb, random_models  # noqa: E402
from varrt.export.exporter import precision_models  # noqa: E402
from varrt.runtime.bench import provenance, write_results  # noqa: E402
from varrt.runtime.generate import generate  # noqa: E402
from varrt.runtime.plan import Plan  # noqa: E402
from varrt.runtime.policies import Policy, StaticPolicy  # noqa: E402


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def cfg_off_plan(sched) -> Plan:
    from dataclasses import replace

    full = Plan.full(sched)
    half = sched.num_scales // 2
    scales = tuple(replace(s, cfg="cond") if si >= half else s for si, s in enumerate(full.scales))
    return Plan("cfg-off-late", scales, f"CFG off from scale {half}")


class SplitPolicy(Policy):
    """Even samples keep CFG, odd ones drop it after the middle scale: a batch split into groups."""

    name = "split"

    def __init__(self, sched) -> None:
        super().__init__((Plan.full(sched), cfg_off_plan(sched)))
        self.split_from = sched.num_scales // 2

    def after_scale(self, state):
        if state.si != self.split_from - 1:
            return None
        return torch.arange(state.samples.numel()) % 2


class StandIn(TorchEngine):
    """The dry run's torch-graph: the eager engine with persistent KV buffers (no CUDA graphs on a
    CPU: it checks the script and the runtime's buffer reuse, not a GPU)."""

    def __init__(self, var, vq) -> None:
        super().__init__(var, vq)
        self.buffers = BufferPool(self.device)

    def allocate(self, spec, index: int = 0):
        return self.buffers.take(spec, index)

    def memory(self) -> dict:
        return {"buffers_bytes": self.buffers.bytes, "cuda_graphs": {"graphs": 0, "captured": 0}}


def make_engine(var, vq, stand_in: bool):
    """torch-graph on a GPU; the stand-in on a CPU."""
    if stand_in:
        return StandIn(var, vq)
    from varrt.engines.torch_graph_engine import TorchGraphEngine

    return TorchGraphEngine(var, vq)


def same_tokens(ref, got) -> dict:
    diff = [si for si, (a, b) in enumerate(zip(ref.indices, got.indices)) if not _equal(a, b)]
    return {"identical": not diff, "first_different_scale": diff[0] if diff else None}


def _equal(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def labels_for(batch: int) -> list[int]:
    return [(207 + 97 * i) % 1000 for i in range(batch)]


# ------------------------------------------------------------------------------------------ sections
def parity(models, args, device, stand_in: bool) -> list[dict]:
    out = []
    sched = models[0].cfg.schedule
    for precision in args.precisions:
        var, vq = precision_models(*copy.deepcopy(models), precision)
        var, vq = var.to(device), vq.to(device)
        ref_engine, engine = TorchEngine(var, vq), make_engine(var, vq, stand_in)
        for batch in args.batches:
            for cfg_name, plan in (("on", Plan.full(sched)), ("off-late", cfg_off_plan(sched))):
                policy = StaticPolicy(plan)
                ref = generate(ref_engine, labels_for(batch), seed=0, policy=policy)
                case = {"precision": precision, "batch": batch, "cfg": cfg_name}
                for run in ("first", "replay"):
                    case[run] = same_tokens(ref, generate(engine, labels_for(batch), seed=0, policy=policy))
                out.append(case)
        del engine, ref_engine
    return out


def captures(models, args, device, stand_in: bool) -> dict:
    var, vq = precision_models(*copy.deepcopy(models), args.precisions[0])
    engine = make_engine(var.to(device), vq.to(device), stand_in)
    policy = SplitPolicy(var.cfg.schedule)
    batch = max(2, min(args.batches))
    rows = []
    for _ in range(args.generations):
        result = generate(engine, labels_for(batch), seed=0, policy=policy)
        graphs = engine.memory()["cuda_graphs"] if hasattr(engine, "memory") else {}
        buffers = len(engine.buffers.buffers) if hasattr(engine, "buffers") else None
        rows.append({"captured": graphs.get("captured"), "graphs": graphs.get("graphs"), "kv_buffers": buffers})
        plans = sorted(set(result.plans))
    grew = any(r != rows[0] for r in rows[1:])
    return {"policy": "split (two plans)", "batch": batch, "plans": plans, "after_each": rows, "pile_up": grew}


def timings(models, args, device, stand_in: bool, budget: Budget) -> list[dict]:
    out = []
    for precision in args.timing_precisions:
        var, vq = precision_models(*copy.deepcopy(models), precision)
        var, vq = var.to(device), vq.to(device)
        engines = {"torch": TorchEngine(var, vq), "torch-graph": make_engine(var, vq, stand_in)}
        for batch in args.timing_batches:
            if budget.left() < 30:
                out.append({"precision": precision, "batch": batch, "skipped": "time budget"})
                continue
            row = {"precision": precision, "batch": batch}
            generate_one = lambda engine, i, b=batch: generate(engine, labels_for(b), seed=i)  # noqa: E731
            row.update(side_by_side(engines, generate_one, device, args.warmup, args.repeat))
            out.append(row)
        graph_engine = engines["torch-graph"]
        if hasattr(graph_engine, "memory"):
            out.append({"precision": precision, "torch-graph memory": graph_engine.memory()})
        del engines
    return out


def tensorrt_section(device) -> dict:
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        return {"skipped": f"TensorRT is not importable here ({type(e).__name__}: {e})"}
    if device.type != "cuda":
        return {"skipped": "no GPU"}
    try:
        import tempfile

        from helpers import tiny_source, tiny_var, tiny_vqvae
        from varrt.engines.compare import compare
        from varrt.engines.tensorrt_engine import TrtEngine
        from varrt.engines.trt_config import BuildConfig
        from varrt.export.artifact import read_manifest
        from varrt.export.exporter import ExportConfig
        from varrt.runtime.artifacts import ExportRequest, ensure_artifact

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        models = tiny_var(2), tiny_vqvae()
        out = Path(tempfile.mkdtemp(prefix="varrt-trt-"))
        artifact = ensure_artifact(
            ExportRequest(tiny_source(), ("full", "fastvar"), 2, ExportConfig()), lambda: models, out=out / "a"
        )
        engine = TrtEngine(artifact, BuildConfig(tf32=False))
        ref = TorchEngine(copy.deepcopy(models[0]).cuda(), copy.deepcopy(models[1]).cuda())
        diffs = compare(ref, engine, read_manifest(artifact).graphs, seed=1)
        tokens = [same_tokens(generate(ref, [3, 7], seed=0), generate(engine, [3, 7], seed=0)) for _ in range(2)]
        return {
            "tensorrt": tensorrt.__version__,
            "worst_rel_diff": max(d.rel for d in diffs),
            "graphs": len({d.graph for d in diffs}),
            "tokens_first_and_replay": tokens,
            "memory": engine.memory(),
        }
    except Exception as e:  # a report, not a crash: the other sections' results still count
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


# ------------------------------------------------------------------------------------------ report
def summary(r: dict) -> str:
    where = "DRY RUN on the CPU: the eager engine stands in for torch-graph" if r["dry_run"] else r["device"]
    lines = [f"# GPU check ({where})", ""]
    p = r["provenance"]
    lines += [
        f"- date {p['date']}, commit `{p['commit']}`, command `{p['command']}`",
        f"- machine: {json.dumps(p['machine'])}",
        f"- versions: {json.dumps(p['versions'])}",
        f"- model {r['model']} with **random weights** (perturbed, std 0.02): timings and parity only, no fidelity",
        "",
        "## Parity: torch-graph vs eager torch, same GPU and generator (tokens at every scale)",
        "",
        "| precision | batch | CFG | first call | replay |",
        "|---|---|---|---|---|",
    ]
    for c in r.get("parity", []):
        fmt = lambda x: "identical" if x["identical"] else f"differs from scale {x['first_different_scale']}"  # noqa: E731
        lines.append(f"| {c['precision']} | {c['batch']} | {c['cfg']} | {fmt(c['first'])} | {fmt(c['replay'])} |")
    cap = r.get("captures", {})
    if cap:
        lines += ["", f"## Captures over {len(cap['after_each'])} generations ({cap['policy']}, batch {cap['batch']})"]
        lines += ["", f"after each: {cap['after_each']}; pile up: **{cap['pile_up']}**"]
    lines += ["", "## Timings (ms, median [p10, p90]; eager and torch-graph alternated)", ""]
    for t in r.get("timings", []):
        if "torch" not in t:
            lines.append(f"- {json.dumps(t)}")
            continue
        lines.append(f"### {t['precision']}, batch {t['batch']}: speed-up {t['speedup_total']:.2f}x")
        lines += ["", *table_lines(t)]
    lines += infinity.summary_lines(r)
    lines += ["", f"## TensorRT: {json.dumps(r.get('tensorrt'))}", "", f"skipped sections: {r['skipped'] or 'none'}"]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="on the CPU, the eager engine standing in")
    p.add_argument("--model", help="timing model (default var-d16; dry run 'tiny': depth 2, scales 1-2-3-4)")
    p.add_argument("--parity-model", help="parity/captures model (default: --model)")
    p.add_argument("--precisions", default="float32,float16,bfloat16")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--timing-precisions", default="float16,float32")
    p.add_argument("--timing-batches", default="1,16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--infinity-model", help="Infinity model (default infinity-2b; dry run 'tiny'; 'none': skip)")
    p.add_argument("--infinity-pn", default="1M", help="Infinity schedule size (0.06M ... 1M)")
    p.add_argument("--infinity-precisions", default="bfloat16")
    p.add_argument("--infinity-policies", default="full,fastvar")
    p.add_argument("--infinity-batch", type=int, default=1)
    args = p.parse_args(argv)
    split = lambda s, f=str: [f(v) for v in s.split(",") if v]  # noqa: E731
    args.precisions, args.timing_precisions = split(args.precisions), split(args.timing_precisions)
    args.batches, args.timing_batches = split(args.batches, int), split(args.timing_batches, int)
    args.infinity_precisions, args.infinity_policies = split(args.infinity_precisions), split(args.infinity_policies)
    args.infinity_model = args.infinity_model or ("tiny" if args.dry_run else "infinity-2b")
    args.model = args.model or ("tiny" if args.dry_run else "var-d16")
    args.parity_model = args.parity_model or args.model
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    budget = Budget(args.budget_s)
    on_gpu = torch.cuda.is_available() and not args.dry_run
    if not on_gpu and not args.dry_run:
        print("gpu_check: no CUDA GPU visible to torch; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    result = {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "model": args.model,
        "parity_model": args.parity_model,
        "infinity_model": args.infinity_model,
        "weights": "random, perturbed (std 0.02)",
        "provenance": provenance(args.warmup, args.repeat),
        "skipped": [],
    }
    stand_in = not on_gpu

    def models(name):
        if name == "tiny":  # the tests' tiny model on a 4-scale schedule (already perturbed)
            from helpers import tiny_var, tiny_vqvae

            return tiny_var(2, patch_nums=(1, 2, 3, 4)), tiny_vqvae(patch_nums=(1, 2, 3, 4))
        var, vq = random_models(name, seed=0)
        return perturb(var, 0.02, 1), vq

    small = models(args.parity_model)
    sections = [
        ("parity", lambda: parity(small, args, device, stand_in)),
        ("captures", lambda: captures(small, args, device, stand_in)),
        ("timings", lambda: timings(models(args.model), args, device, stand_in, budget)),
        ("tensorrt", lambda: tensorrt_section(device)),
    ]
    if args.infinity_model != "none":
        inf = functools.cache(lambda: infinity.infinity_models(args.infinity_model, args.infinity_pn))
        sections += [
            ("infinity_parity", lambda: infinity.parity(inf(), args, device, stand_in)),
            ("infinity_timings", lambda: infinity.timings(inf(), args, device, stand_in, budget)),
        ]
    for name, run in sections:
        if budget.left() <= 0:
            result["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        result[name] = run()
        result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out / "results", {".json": json.dumps(result, indent=1, default=str)})
    write_results(args.out / "summary", {".md": summary(result)})
    print(f"gpu_check: wrote {args.out / 'results.json'} and {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
