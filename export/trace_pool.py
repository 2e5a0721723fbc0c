"""Trace the components an export lacks side by side, in worker processes.

Tracing a component (torch.export, the ONNX exporter's decompositions, onnxscript's optimiser) is
single-threaded Python, and an export of every policy traces up to eight components one after the
other: 3-4 minutes for the tiny Infinity of the tests, ~8 minutes at var-d16 size on 2 cores. The
components are independent (each its own graph file), so each is traced in its own process.

The workers are fresh interpreters (``python -m varrt.export.trace_pool``), not multiprocessing's:
its spawn method re-runs the caller's main script in every worker, which, in a script without an
``if __name__ == "__main__"`` guard, starts the export again and waits forever on the export's lock.
Each worker takes a share of the components (the long transformer graphs spread first), so the
interpreter starts (~5 s: torch, onnx) are paid once per worker, not per component. The tracer
reaches the workers as one ``torch.save`` file that each maps (``torch.load(mmap=True)``): the OS
shares its pages, so N workers do not hold N copies of the weights. A tracer that does not pickle
traces in this process, with a line saying why; the components a failed worker leaves are traced
again in this process, so an error is the one a one-at-a-time export raises.

``VARRT_EXPORT_JOBS`` caps the workers (default: one per CPU, at most one per missing component;
1 traces in this process).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from varrt.export.pack import component_stem

JOBS_ENV = "VARRT_EXPORT_JOBS"
Trace = Callable[[str, "tuple[int, ...] | None", Path], str]
Job = tuple[str, "tuple[int, ...] | None"]
#: where each traced job's graph lies, and its exporter log
Traced = dict[Job, tuple[Path, str]]


def export_jobs(missing: int) -> int:
    """How many workers trace ``missing`` components."""
    raw = os.environ.get(JOBS_ENV, "").strip()
    if raw:
        try:
            jobs = int(raw)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise ValueError(f"{JOBS_ENV}={raw!r}: set it to a number of worker processes (>= 1), or unset it")
    else:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(jobs, missing))


def trace_side_by_side(trace: Trace, jobs: Sequence[Job], folder: Path, say: Callable[[str], None]) -> Traced:
    """Trace ``jobs`` (component, blocks) with ``trace`` into ``folder`` in worker processes; the
    graph of job ``n`` is ``folder/<n>/<component stem>.onnx`` (+ its ``.data``). Returns what was
    traced: empty when the jobs are traced in this process instead (one job, one worker, or a
    tracer that does not pickle; ``say`` tells which); a job whose worker failed is left out."""
    workers = export_jobs(len(jobs))
    if workers < 2:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    tracer = folder / "tracer.pt"
    try:
        torch.save(trace, tracer)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        say(f"tracing one component at a time: the tracer does not pickle ({e})")
        return {}
    names = ", ".join(c for c, _ in jobs)
    say(f"export {len(jobs)} components in {workers} processes ({names}); {JOBS_ENV}=1 traces one at a time")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the classes the tracer names
    procs = []
    for w, share in enumerate(_shares(jobs, workers)):
        args = [a for i in share for a in (jobs[i][0], _blocks_arg(jobs[i][1]), str(_graph(folder, i, *jobs[i])))]
        with open(folder / f"worker{w}.log", "wb") as log:
            cmd = [sys.executable, "-m", __name__, str(tracer), *args]
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), w, share))
    done: Traced = {}
    start = time.perf_counter()
    try:
        while True:
            for i, (comp, blocks) in enumerate(jobs):
                graph = _graph(folder, i, comp, blocks)
                if (comp, blocks) not in done and graph.with_suffix(".done").exists():
                    done[(comp, blocks)] = (graph, graph.with_suffix(".log").read_text())
                    say(f"traced {comp} ({time.perf_counter() - start:.0f} s, {len(done)}/{len(jobs)})")
            if all(p.poll() is not None for p, _, _ in procs):
                break
            time.sleep(0.2)
        for proc, w, share in procs:
            left = [jobs[i][0] for i in share if jobs[i] not in done]
            if left:
                tail = (folder / f"worker{w}.log").read_text(errors="replace").strip().splitlines()[-1:]
                say(f"a tracing worker failed ({': '.join(tail) or proc.returncode}); tracing {', '.join(left)} here")
    finally:
        for proc, _, _ in procs:
            proc.kill()
            proc.wait()
        tracer.unlink(missing_ok=True)
    return done


def _shares(jobs: Sequence[Job], workers: int) -> list[list[int]]:
    """The jobs of each worker, longest first onto the least loaded (a transformer graph costs
    about five of the others: measured on the tiny Infinity, 15-25 s against 3-6 s)."""
    cost = [5 if "transformer" in comp else 1 for comp, _ in jobs]
    shares: list[list[int]] = [[] for _ in range(workers)]
    load = [0] * workers
    for i in sorted(range(len(jobs)), key=lambda i: -cost[i]):
        w = load.index(min(load))
        shares[w].append(i)
        load[w] += cost[i]
    return [s for s in shares if s]


def move_graph(src: Path, dst: Path) -> None:
    """Move a traced graph and its external data file: the graph records the data file by its
    relative name, so both keep their names."""
    if src.name != dst.name:
        raise ValueError(f"a traced graph keeps its file name: {src.name} -> {dst.name}")
    for suffix in ("", ".data"):
        s = src.with_name(src.name + suffix)
        if s.exists():
            shutil.move(s, dst.with_name(dst.name + suffix))


def _graph(folder: Path, i: int, component: str, blocks: tuple[int, ...] | None) -> Path:
    """Where job ``i`` writes: named as the pack names the component."""
    return folder / str(i) / f"{component_stem(component, blocks)}.onnx"


def _blocks_arg(blocks: tuple[int, ...] | None) -> str:
    return "-" if blocks is None else ",".join(map(str, blocks))


def main(argv: list[str]) -> int:
    """One worker: ``python -m varrt.export.trace_pool TRACER [COMPONENT BLOCKS GRAPH]...``, the
    jobs in order; each writes its graph, the exporter's log beside it (``<stem>.log``) and then a
    ``<stem>.done`` marker, so that the parent sees each job as it finishes."""
    tracer_file, *jobs = argv
    torch.set_num_threads(1)  # tracing is Python-bound; the workers share the machine's cores
    trace = torch.load(tracer_file, mmap=True, weights_only=False)
    for comp, blocks_arg, graph in zip(jobs[::3], jobs[1::3], jobs[2::3]):
        blocks = None if blocks_arg == "-" else tuple(int(b) for b in blocks_arg.split(","))
        out = Path(graph)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".log").write_text(trace(comp, blocks, out))
        out.with_suffix(".done").touch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
