"""``varrt bench``'s figures: per-scale latency bars, and speed-up against fidelity.

Every number a figure shows is one the report's tables show: the speed-up of a (backend, policy)
is its ``speedup_vs_full`` from the timed, interleaved repeats, never a timing taken during the
fidelity pass (which runs other seeds, once each, on one backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from varrt.runtime.outputs import write_file


def speed_fidelity_points(report: dict) -> list[tuple[str, float, float]]:
    """(label, speed-up vs full, mean SSIM vs full) per (backend, policy) that has fidelity figures."""
    fidelity = report.get("fidelity") or {}
    return [
        (f"{r['policy']} ({r['backend']})", r["speedup_vs_full"], fidelity[r["policy"]]["ssim"]["mean"])
        for r in report["results"]
        if r["policy"] in fidelity
    ]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scales_figure(report: dict):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(report["results"])), 4))
    labels = [f"{r['backend']}\n{r['policy']}" for r in report["results"]]
    bottoms = np.zeros(len(labels))
    n_scales = len(report["model"]["schedule"])
    cmap = plt.get_cmap("viridis", n_scales + 1)
    for si in range(n_scales):
        vals = np.array([r["scale_ms"][si]["median"] for r in report["results"]])
        ax.bar(labels, vals, bottom=bottoms, color=cmap(si), label=f"scale {si}")
        bottoms += vals
    dec = np.array([r["decode_ms"]["median"] for r in report["results"]])
    ax.bar(labels, dec, bottom=bottoms, color="lightgrey", label="decode")
    ax.set_ylabel("median ms")
    ax.set_title(f"{report['model']['name']}: per-scale latency (batch {report['batch']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def speed_fidelity_figure(report: dict):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, speedup, ssim in speed_fidelity_points(report):
        ax.scatter([speedup], [ssim], s=40)
        ax.annotate(label, (speedup, ssim), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("speed-up vs full (end-to-end, same backend; the table's)")
    ax.set_ylabel("SSIM vs full (mean)")
    ax.set_title("speed vs fidelity")
    fig.tight_layout()
    return fig


def plots(report: dict, stem: Path) -> list[Path]:
    """Stacked per-scale latency bars per (backend, policy); speed-up vs SSIM when fidelity exists."""
    plt = _pyplot()
    figures = {"-scales.png": scales_figure(report)}
    if report.get("fidelity"):
        figures["-speedup-ssim.png"] = speed_fidelity_figure(report)
    out = []
    for suffix, fig in figures.items():
        out.append(
            write_file(stem.with_name(stem.name + suffix), lambda tmp, f=fig: f.savefig(tmp, dpi=110, format="png"))
        )
        plt.close(fig)
    return out
