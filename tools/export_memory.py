"""Peak resident memory of `varrt export` for an Infinity model with random weights.

Runs the real command line (`varrt export --model infinity-2b --random-weights ...`) as a child
process, samples its resident set every 50 ms from /proc (each progress line it prints is stamped
with the RSS of that moment, so the peak is attributed to a step), and takes the exact peak from
the kernel (``ru_maxrss`` of the child, from ``wait4``). The weights the export holds are counted
two ways: the torch models' fp32 parameter bytes, and the artifact's weights.bin (every tensor the
graphs read, once). The T5 encoder is a random 2-layer one at flan-t5-xl's width (2048): the
measurement is about Infinity's transformer, and a real flan-t5-xl encoder (4.9 GB in fp32) adds
its own bytes to both the weights and the peak.

    python tools/export_memory.py                       # Infinity-2B, 256 px schedule, policy full
    python tools/export_memory.py --pn 0.25M --policy full --policy fastvar

Writes benchmarks/results/export-memory-<model>.json and .md (machine, versions, commit). Random
weights: the figures are about memory, never about images. Needs about 1.4x the fp32 weights free
(checked first, from /proc/meminfo): ~12 GB for Infinity-2B.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30


def meminfo(key: str) -> int:
    """A /proc/meminfo figure in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_of(pid: int) -> int:
    """Resident bytes of a live process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def model_bytes(model: str) -> dict[str, int]:
    """fp32 parameter bytes of the transformer and its VAE, counted on the meta device (no memory)."""
    import torch

    from varrt.export.bsq_vae import BSQVAE
    from varrt.export.infinity import Infinity
    from varrt.export.infinity_config import BSQ_VAE_CONFIGS, INFINITY_CONFIGS

    cfg = INFINITY_CONFIGS[model]
    with torch.device("meta"):
        infinity = Infinity(cfg)
        vae = BSQVAE(BSQ_VAE_CONFIGS["infinity_vae_d56" if cfg.patchify else "infinity_vae_d32"])

    def count(m) -> int:
        return sum(t.numel() * 4 for t in m.state_dict().values() if t.is_floating_point())

    return {"transformer": count(infinity), "vae": count(vae)}


def write_text_encoder(folder: Path, width: int) -> int:
    """A random 2-layer T5 encoder at Infinity's text width, with its tokenizer; its fp32 bytes."""
    from varrt.export.text_encoder import save_text_encoder, tiny_text_encoder

    te = tiny_text_encoder(width)
    save_text_encoder(te, folder)
    return sum(t.numel() * 4 for t in te.model.state_dict().values())


class Sampler:
    """The child's RSS every ``period`` seconds, and each line it prints with the RSS at that moment."""

    def __init__(self, proc: subprocess.Popen, limit: int, period: float = 0.05) -> None:
        self.proc, self.limit, self.period, self.t0 = proc, limit, period, time.monotonic()
        self.peak, self.steps, self.lines, self.aborted = 0, [], [], False
        self._step = "start"
        self._threads = [threading.Thread(target=self._sample, daemon=True), threading.Thread(target=self._read)]
        for t in self._threads:
            t.start()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            rss = rss_of(self.proc.pid)
            self.peak = max(self.peak, rss)
            if rss > self.limit:  # a shared machine: stop before the kernel's OOM killer picks a victim
                self.aborted = True
                self.proc.kill()
            if self.steps and rss > self.steps[-1]["peak_rss"]:
                self.steps[-1]["peak_rss"] = rss
            time.sleep(self.period)

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if line.startswith("export: "):
                rss = rss_of(self.proc.pid)
                self.steps.append(
                    {
                        "step": line[len("export: ") :],
                        "t_s": round(time.monotonic() - self.t0, 1),
                        "rss": rss,
                        "peak_rss": rss,
                    }
                )

    def join(self) -> None:
        for t in self._threads:
            t.join()


def run_export(args: argparse.Namespace, work: Path, t5: Path) -> dict:
    out = work / "artifact"
    cmd = [
        str(Path(sys.executable).with_name("varrt")),
        "export",
        "--model",
        args.model,
        "--random-weights",
        "--text-encoder",
        str(t5),
        "--pn",
        args.pn,
        "--out",
        str(out),
        *(x for p in args.policy for x in ("--policy", p)),
    ]
    env = {**os.environ, "VARRT_CACHE": str(work / "cache"), "COLUMNS": "200"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sampler = Sampler(proc, args.abort_above)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    stdout = proc.stdout.read().decode()
    wall = time.monotonic() - t0
    if sampler.aborted:
        raise SystemExit(
            f"stopped the export at {sampler.peak / GIB:.1f} GiB resident (--abort-above {args.abort_above / GIB:.1f} "
            "GiB); free memory or raise --abort-above"
        )
    if proc.returncode != 0:
        tail = "\n".join(sampler.lines[-15:])
        raise SystemExit(f"varrt export failed (exit {proc.returncode}):\n{tail}")
    manifest = json.loads((out / "manifest.json").read_text())
    weights_bin = sum(int(meta["bytes"]) for meta in manifest["files"].values())
    return {
        "command": " ".join(cmd[1:]).replace(str(work), "<tmp>"),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # kernel's high-water mark of the child
        "sampled_peak_rss_bytes": sampler.peak,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "weights_bin_bytes": weights_bin,
        "graphs": len(manifest["graphs"]),
        "components": sorted(manifest["components"]),
        "validation": manifest.get("validation", {}),
        "steps": sampler.steps,
        "stdout_tail": stdout.strip().splitlines()[-1:],
    }


def git_commit() -> str:
    try:
        sha = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True).strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD"]).returncode != 0
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(r: dict) -> str:
    m = r["measured"]
    gb = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    lines = [
        f"# `varrt export` peak memory: {r['model']} (random weights)",
        "",
        f"{r['machine']['cpus']} CPUs, {gb(r['machine']['mem_total_bytes'])} RAM, {r['machine']['platform']}; "
        f"torch {r['versions']['torch']}, onnx {r['versions']['onnx']}, onnxruntime {r['versions']['onnxruntime']}; "
        f"commit {r['commit'][:12]}; {r['date']}.",
        "",
        f"Command: `{m['command']}` ({m['graphs']} static graphs; validation: "
        f"{', '.join(f'{k}' for k in m['validation']) or 'none'}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| peak RSS (kernel high-water mark) | {gb(m['peak_rss_bytes'])} |",
        f"| torch weights, fp32 (transformer + VAE + T5) | {gb(r['weights']['torch_fp32_bytes'])} |",
        f"| artifact weights.bin | {gb(m['weights_bin_bytes'])} |",
        f"| peak / torch weights | **{r['ratio_to_torch_weights']:.2f}x** (target <= 1.3x) |",
        f"| peak / weights.bin | {r['ratio_to_weights_bin']:.2f}x |",
        f"| wall / CPU time | {m['wall_s']:.0f} s / {m['cpu_s']:.0f} s |",
        "",
        "Resident memory at each step the export printed (sampled every 50 ms; peak until the next step):",
        "",
        "| t (s) | step | RSS at start | peak in step |",
        "|---:|---|---:|---:|",
        *(f"| {s['t_s']} | {s['step']} | {gb(s['rss'])} | {gb(s['peak_rss'])} |" for s in m["steps"]),
        "",
        f"Extrapolated (not measured) for {r['extrapolated']['model']}: fp32 weights "
        f"{gb(r['extrapolated']['torch_fp32_bytes'])} -> peak ~{gb(r['extrapolated']['peak_rss_bytes'])} at the "
        "measured ratio, plus the real flan-t5-xl encoder (4.9 GB fp32) with either model. "
        "The T5 here is a random 2-layer encoder at width 2048.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="infinity-2b", choices=["infinity-2b", "infinity-8b"])
    p.add_argument("--pn", default="0.06M", help="schedule size (default 0.06M: 256 px)")
    p.add_argument("--policy", action="append", default=None, help="policies to export (default: full)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--name", help="result file stem (default export-memory-<model>)")
    p.add_argument(
        "--abort-above", type=float, help="kill the export past this many GiB resident (default: available - 2 GiB)"
    )
    args = p.parse_args()
    args.policy = args.policy or ["full"]

    from varrt.export.artifact import environment
    from varrt.export.infinity_config import INFINITY_CONFIGS

    counts = model_bytes(args.model)
    need = int(1.4 * sum(counts.values()))
    free = meminfo("MemAvailable")
    args.abort_above = int(args.abort_above * GIB) if args.abort_above else free - 2 * GIB
    if free < need:
        raise SystemExit(
            f"{args.model}: the export needs ~{need / GIB:.1f} GiB free, {free / GIB:.1f} GiB are available; "
            "free memory (or run on a larger machine) and try again"
        )
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        t5_bytes = write_text_encoder(work / "t5", INFINITY_CONFIGS[args.model].text_channels)
        measured = run_export(args, work, work / "t5")
    torch_bytes = sum(counts.values()) + t5_bytes
    ratio = measured["peak_rss_bytes"] / torch_bytes
    other = "infinity-8b" if args.model == "infinity-2b" else "infinity-2b"
    other_bytes = sum(model_bytes(other).values()) + t5_bytes
    result = {
        "tool": "tools/export_memory.py",
        "model": args.model,
        "weights": {"random": True, "torch_fp32_bytes": torch_bytes, **{f"{k}_bytes": v for k, v in counts.items()}},
        "t5": f"random 2-layer T5 encoder at width {INFINITY_CONFIGS[args.model].text_channels} ({t5_bytes} bytes)",
        "measured": measured,
        "ratio_to_torch_weights": ratio,
        "ratio_to_weights_bin": measured["peak_rss_bytes"] / measured["weights_bin_bytes"],
        "extrapolated": {
            "model": other,
            "how": "the measured ratio times its fp32 weights (transformer + VAE + this T5); not measured",
            "torch_fp32_bytes": other_bytes,
            "peak_rss_bytes": int(ratio * other_bytes),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "mem_total_bytes": meminfo("MemTotal"),
            "mem_available_at_start_bytes": free,
        },
        "versions": environment(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"export-memory-{args.model}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
