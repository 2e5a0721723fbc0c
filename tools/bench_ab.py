"""Before / after in one run: the same generations on two checkouts, alternating.

    python tools/bench_ab.py --base <git revision> [--settings demo-b10] [--backends ort,torch]

The base revision is unpacked (``git archive``) into a temporary directory and imported from
there by one worker process; a second worker imports this checkout. Each worker loads the model
and its export (made or reused through ``$VARRT_CACHE``; the export key includes the graph
version, so the two never share graphs) once, then the parent asks them in turn for one
generation each — (base, after), (after, base), ... — so the machine's drift hits both alike.
Reported per (backend, policy): both medians (p10-p90) and the per-repeat ratio base / after.
Results go to benchmarks/results/<name>.{json,md}. The workers use only APIs both revisions have
(ensure_artifact, the engines, generate, make_policy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from varrt.runtime.bench import provenance, stats, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {"demo-b1": ("demo", 1), "demo-b10": ("demo", 10), "var-d16-b1": ("var-d16", 1)}

WORKER = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ.get("AB_THREADS") or os.cpu_count() or 1))
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.checkpoint import load_models, random_models
from varrt.export.exporter import ExportConfig
from varrt.runtime.artifacts import ExportRequest, checkpoint_source, ensure_artifact, random_source
from varrt.runtime.generate import generate
from varrt.runtime.policies import make_policy
from varrt.runtime.sampling import SamplingConfig
import varrt.export.graphs as graphs

def reply(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

engines, policies = {}, {}
for line in sys.stdin:
    req = json.loads(line)
    if req["cmd"] == "setup":
        model, batch = req["model"], req["batch"]
        if model == "demo":
            from varrt.runtime.demo import demo_model
            demo = demo_model()
            var, vqvae = load_models(demo.var, demo.vqvae)
            source, sampling = checkpoint_source(demo.var, demo.vqvae), SamplingConfig(**demo.sampling)
            labels = [i % len(demo.classes) for i in range(batch)]
        else:
            var, vqvae = random_models(model)
            source, sampling = random_source(model, 0), SamplingConfig()
            labels = [(207, 88, 360, 980, 1, 292, 812, 417)[i % 8] for i in range(batch)]
        request = ExportRequest(source, tuple(req["policies"]), batch, ExportConfig())
        if "ort" in req["backends"]:
            engines["ort"] = OrtEngine(ensure_artifact(request, lambda: (var, vqvae)))
        engines["torch"] = TorchEngine(var, vqvae)
        policies = {p: make_policy(p, var.cfg) for p in req["policies"]}
        cap = getattr(engines.get("ort"), "kv_capacity", None)
        reply(ok=True, graph_contract=getattr(graphs, "GRAPH_CONTRACT", None), file=graphs.__file__)
    elif req["cmd"] == "run":
        t0 = time.perf_counter()
        r = generate(engines[req["backend"]], labels, seed=0, sampling=sampling, policy=policies[req["policy"]],
                     capacity=cap)
        reply(total=time.perf_counter() - t0, scales=r.scale_seconds, decode=r.seconds["decode"],
              tokens=[None if i is None else i.tolist() for i in r.indices] if req.get("tokens") else None)
"""


class Worker:
    def __init__(self, package_root: Path | None, threads: int | None) -> None:
        env = dict(os.environ)
        if package_root is not None:
            env["PYTHONPATH"] = str(package_root) + os.pathsep + env.get("PYTHONPATH", "")
        if threads:
            env["AB_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited ({self.proc.wait()}); see its output above")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def unpack(rev: str, into: Path) -> Path:
    """``rev`` of this repository as an importable ``varrt`` package under ``into``."""
    src = into / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = into / "pkg" / "varrt"
    pkg.mkdir(parents=True)
    for name in ("export", "engines", "runtime"):
        (pkg / name).symlink_to(src / name)
    return pkg.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare this checkout with")
    p.add_argument("--settings", default="demo-b10", help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--backends", default="ort", help="comma-separated: ort, torch")
    p.add_argument("--policies", default="full,skipvar,stagevar,fastvar", help="comma-separated policy specs")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--name", default="ab")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    base_sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.base], capture_output=True, text=True
    ).stdout.strip()
    if not base_sha:
        print(f"--base {args.base!r} is not a revision of {ROOT}")
        return 2
    policies, backends = args.policies.split(","), args.backends.split(",")
    report = {**provenance(args.warmup, args.repeat), "base": base_sha, "settings": []}
    with tempfile.TemporaryDirectory(prefix="varrt-ab-") as tmp:
        workers = {"base": Worker(unpack(args.base, Path(tmp)), args.threads), "after": Worker(None, args.threads)}
        try:
            for name in args.settings.split(","):
                model, batch = SETTINGS[name]
                info = {
                    k: w.ask(cmd="setup", model=model, batch=batch, policies=policies, backends=backends)
                    for k, w in workers.items()
                }
                runs = {(k, b, pol): [] for k in workers for b in backends for pol in policies}
                for rep in range(args.warmup + args.repeat):
                    order = list(workers) if rep % 2 == 0 else list(workers)[::-1]
                    for pol in policies:
                        for b in backends:
                            for k in order:
                                r = workers[k].ask(cmd="run", backend=b, policy=pol)
                                if rep >= args.warmup:
                                    runs[k, b, pol].append({**r, "load": os.getloadavg()[0]})
                    print(f"{name}: repeat {rep + 1} of {args.warmup + args.repeat}", file=sys.stderr, flush=True)
                rows = []
                for b in backends:
                    for pol in policies:
                        base, after = runs["base", b, pol], runs["after", b, pol]
                        rows.append(
                            {
                                "backend": b,
                                "policy": pol,
                                "base_s": stats([r["total"] for r in base]),
                                "after_s": stats([r["total"] for r in after]),
                                "base_over_after": stats([x["total"] / y["total"] for x, y in zip(base, after)]),
                                "base_scale_ms": [
                                    float(np.median([r["scales"][i] for r in base]) * 1e3)
                                    for i in range(len(base[0]["scales"]))
                                ],
                                "after_scale_ms": [
                                    float(np.median([r["scales"][i] for r in after]) * 1e3)
                                    for i in range(len(after[0]["scales"]))
                                ],
                                "load_1min": stats([r["load"] for r in base + after]),
                            }
                        )
                report["settings"].append({"setting": name, "workers": info, "rows": rows})
        finally:
            for w in workers.values():
                w.close()
    stem = args.out_dir / args.name
    md = markdown(report)
    write_results(stem, {".json": json.dumps(report, indent=1), ".md": md})
    print(md)
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Before / after: `{report['base']}` vs `{report['commit']}`",
        "",
        f"- date {report['date']}, command `{report['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores; versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- warm-up {report['warmup']}, repeats {report['repeat']}; medians (p10-p90); base / after per repeat, the "
        "two checkouts back to back (order alternating)",
        "",
    ]
    for s in report["settings"]:
        lines += [
            f"## {s['setting']}",
            "",
            "| backend | policy | base s | after s | base / after | load |",
            "|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            f = lambda x: f"{x['median']:.3f} ({x['p10']:.3f}-{x['p90']:.3f})"  # noqa: E731
            lines.append(
                f"| {r['backend']} | {r['policy']} | {f(r['base_s'])} | {f(r['after_s'])} | "
                f"{r['base_over_after']['median']:.2f} ({r['base_over_after']['p10']:.2f}-"
                f"{r['base_over_after']['p90']:.2f}) | {r['load_1min']['median']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
