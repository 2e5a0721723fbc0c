"""Timing of two engines side by side for the one-shot GPU check (``gpu_check.py`` and its Infinity
sections): alternated in one run, synchronised, warm-up then repeats, per-scale and total median and
spread, peak allocated memory per engine."""

from __future__ import annotations

from collections.abc import Callable

import torch

from varrt.runtime.bench import stats


def side_by_side(engines: dict, generate_one: Callable, device, warmup: int, repeat: int) -> dict:
    """``generate_one(engine, i)`` -> a result with ``scale_seconds`` and ``seconds["total"]``; the
    row of per-engine figures and the total speed-up of ``torch-graph`` over ``torch``."""
    cuda = device.type == "cuda"
    runs: dict[str, list] = {k: [] for k in engines}
    peak: dict[str, int] = {}
    for i in range(warmup + repeat):
        for name, engine in engines.items():  # alternated: side by side in one run
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.synchronize(device)
            r = generate_one(engine, i)
            if cuda:
                torch.cuda.synchronize(device)
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))
            if i >= warmup:
                runs[name].append([*r.scale_seconds, r.seconds["total"]])
    row = {}
    for name, rs in runs.items():
        row[name] = {
            "scales_ms": [stats([r[si] * 1e3 for r in rs]) for si in range(len(rs[0]) - 1)],
            "total_ms": stats([r[-1] * 1e3 for r in rs]),
            "peak_allocated_bytes": peak.get(name),
        }
    row["speedup_total"] = row["torch"]["total_ms"]["median"] / row["torch-graph"]["total_ms"]["median"]
    return row


def table_lines(row: dict) -> list[str]:
    """A :func:`side_by_side` row as markdown: per-scale medians [p10, p90], totals, peak memory."""
    lines = ["| scale | torch | torch-graph |", "|---|---|---|"]
    for si, (a, b) in enumerate(zip(row["torch"]["scales_ms"], row["torch-graph"]["scales_ms"])):
        lines.append(f"| {si} | {_ms(a)} | {_ms(b)} |")
    a, b = row["torch"]["total_ms"], row["torch-graph"]["total_ms"]
    lines.append(f"| total | {a['median']:.1f} | {b['median']:.1f} |")
    peaks = {k: row[k]["peak_allocated_bytes"] for k in ("torch", "torch-graph")}
    lines.append(f"\npeak allocated bytes: {peaks}\n")
    return lines


def _ms(s: dict) -> str:
    return f"{s['median']:.2f} [{s['p10']:.2f}, {s['p90']:.2f}]"
