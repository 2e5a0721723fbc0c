"""Export time and export-cache size of two source trees, side by side (tiny test model, random weights).

    python tools/bench_export.py --tree before=/path/to/old/checkout --tree after=. [--repeat 2]

Each tree runs the same three exports into a fresh ``VARRT_CACHE`` (the default cache folder, as
``varrt generate`` uses it), in one process per (tree, repeat), trees alternating within each
repeat so that machine drift hits both:

1. ``full`` at batch 1 (cold: includes the exporter's first-use warm-up, in both trees);
2. ``full`` at batch 2 (the same checkpoint: what a second batch size costs);
3. the test suite's ``policy_artifact`` set (nine policies) at batch 2, after 1 and 2.

Every export is validated (ONNX Runtime vs torch), as by default. Each step records its wall time
and the CPU time of the process (all its threads): on a shared machine (other jobs queued on the
same cores) the CPU time measures the work, the wall time mostly the queue. After each step the
cache's disk use is measured with every file counted once (by inode). A tree is imported through a folder of
links (``varrt/export`` -> ``TREE/export``, ...) put first on ``PYTHONPATH``, so the installed
environment is the same for both. The model is ``tests/helpers.py``'s depth-2 VAR with random
weights: the times are exporter overhead (tracing dominates), not a released model's.
Results: ``benchmarks/results/export-cache-tiny.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from varrt.runtime.bench import provenance, stats, write_results

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

#: one repeat of one tree: three exports, their seconds and the cache's bytes after each
RUN = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import torch
torch.set_num_threads(int(sys.argv[2]))
from helpers import budget_plan_file, tiny_source, tiny_var, tiny_vqvae
from varrt.export.exporter import ExportConfig
from varrt.runtime.artifacts import ExportRequest, ensure_artifact

def cache_bytes():
    seen, total = set(), 0
    for root, _, files in os.walk(os.environ["VARRT_CACHE"]):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total

models = tiny_var(2), tiny_vqvae()
plan = str(budget_plan_file(Path(os.environ["VARRT_CACHE"]).parent / "budgets.json"))
policies = ("full", "fastvar", "skipvar", plan, "ld-pruning", "stepvar", "toprovar", "stagevar",
            "skipvar+stepvar")
steps = [("full, batch 1", ("full",), 1), ("full, batch 2", ("full",), 2), ("9 policies, batch 2", policies, 2)]
out = []
for name, specs, batch in steps:
    t0, c0 = time.perf_counter(), time.process_time()
    ensure_artifact(ExportRequest(tiny_source(), specs, batch, ExportConfig()), lambda: models)
    out.append({"step": name, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "cache_bytes": cache_bytes(), "load": os.getloadavg()[0]})
print("RESULT " + json.dumps(out))
"""


def shim(tree: Path, into: Path) -> Path:
    """A folder whose ``varrt`` package is ``tree``'s source folders."""
    pkg = into / "varrt"
    pkg.mkdir(parents=True)
    for part in ("export", "engines", "runtime"):
        (pkg / part).symlink_to(tree / part)
    return into


def commit(tree: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return (sha.stdout.strip() or "not a git checkout") + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def run_once(tree: Path, path: Path, threads: int, work: Path) -> list[dict]:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    env = {**os.environ, "VARRT_CACHE": str(cache), "PYTHONPATH": str(path)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(tree), str(threads)], env=env, capture_output=True, text=True, cwd=work
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"{tree}: the export run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(line.removeprefix("RESULT "))


def markdown(report: dict) -> str:
    p = report["provenance"]
    names = list(report["trees"])
    lines = [
        "# Export time and export-cache size, side by side",
        "",
        f"{p['date']}, {p['machine']['cpu']} ({p['machine']['cores']} cores, {report['threads']} torch threads), "
        f"torch {p['versions']['torch']}, onnxruntime {p['versions']['onnxruntime']}, onnx {p['versions']['onnx']}.",
        "Model: the tests' depth-2 VAR, RANDOM WEIGHTS (exporter overhead only; no fidelity is measured). "
        f"{report['repeat']} repeats per tree, trees alternating; each repeat a fresh cache, in one process.",
        "",
        "| tree | commit |",
        "|---|---|",
        *[f"| {n} | {report['trees'][n]['commit']} |" for n in names],
        "",
        f"Load average while measuring (1 min, at each step's end): {report['load']}.",
        "",
        "| step | " + " | ".join(f"{n} CPU s" for n in names) + " | " + " | ".join(f"{n} wall s" for n in names)
        + " | " + " | ".join(f"{n} cache after" for n in names) + " |",
        "|---|" + "---|" * (3 * len(names)),
    ]  # fmt: skip

    def cell(s: dict) -> str:
        return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"

    for i, step in enumerate(report["steps"]):
        cpu = [cell(report["trees"][n]["cpu_seconds"][i]) for n in names]
        wall = [cell(report["trees"][n]["seconds"][i]) for n in names]
        sizes = [f"{report['trees'][n]['cache_mib'][i]:.1f} MiB" for n in names]
        lines.append(f"| {step} | " + " | ".join(cpu + wall + sizes) + " |")
    lines += ["", "Cells: median (min-max) over the repeats."]
    if len(names) == 2:
        a, b = names
        lines += [f"CPU-time ratios {a} / {b}, per repeat, median: " + ", ".join(
            f"{step}: {stats(report['ratios'][i])['median']:.2f}x" for i, step in enumerate(report["steps"])
        )]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source checkout (repeat)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the work, no spinning)")
    ap.add_argument("--name", default="export-cache-tiny")
    args = ap.parse_args()
    trees = {}
    for t in args.tree:
        name, _, path = t.partition("=")
        trees[name] = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        paths = {n: shim(p, work / f"shim-{n}") for n, p in trees.items()}
        runs: dict[str, list[list[dict]]] = {n: [] for n in trees}
        for r in range(args.repeat):
            for n in trees if r % 2 == 0 else reversed(list(trees)):
                print(f"repeat {r + 1}/{args.repeat}: {n} ...", flush=True)
                runs[n].append(run_once(trees[n], paths[n], args.threads, work))
    steps = [s["step"] for s in next(iter(runs.values()))[0]]
    report = {
        "provenance": provenance(0, args.repeat),
        "threads": args.threads,
        "repeat": args.repeat,
        "steps": steps,
        "trees": {
            n: {
                "path": str(trees[n]),
                "commit": commit(trees[n]),
                "seconds": [stats([run[i]["seconds"] for run in runs[n]]) for i in range(len(steps))],
                "cpu_seconds": [stats([run[i]["cpu_seconds"] for run in runs[n]]) for i in range(len(steps))],
                "cache_mib": [runs[n][-1][i]["cache_bytes"] / 2**20 for i in range(len(steps))],
                "runs": runs[n],
            }
            for n in trees
        },
    }
    if len(trees) == 2:
        a, b = list(trees)
        report["ratios"] = [
            [ra[i]["cpu_seconds"] / rb[i]["cpu_seconds"] for ra, rb in zip(runs[a], runs[b])] for i in range(len(steps))
        ]
    report["load"] = ", ".join(f"{run[i]['load']:.1f}" for n in trees for run in runs[n] for i in range(len(steps)))
    text = markdown(report)
    for p in write_results(RESULTS / args.name, {".json": json.dumps(report, indent=1), ".md": text}):
        print(p)
    print(text)


if __name__ == "__main__":
    main()
