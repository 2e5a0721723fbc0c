"""CUDA graphs for the compiled backends (TensorRT, torch-graph): when to capture, replay or just
run; what to do when a capture fails; which memory the graphs and the runtime's buffers use.

* :class:`GraphCache` decides per call (:meth:`~GraphCache.action`) and holds at most ``limit``
  captured graphs (least recently used evicted), so graphs cannot pile up however many cache
  addresses a long-running process sees. A graph that could not be captured is remembered, and
  its calls run without a CUDA graph from then on (as ``trtexec --useCudaGraph`` does).
* :func:`run_cached` is that decision around three callables; it needs no GPU, so the fallback is
  tested on the CPU.
* :func:`capture` ends a failed capture cleanly and reports its first cause, not the error that
  ending an invalidated capture raises.
* :class:`BufferPool` hands out persistent buffers: the n-th KV buffer of a shape in a generation
  is the same memory in every generation, so captured graphs keyed by its address replay.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from varrt.export.graphs import TensorSpec

#: captured graphs kept per engine: every (graph, KV buffer) pair of a few policies fits
DEFAULT_LIMIT = 256


class CaptureFailed(RuntimeError):
    """A CUDA-graph capture that did not produce a graph; the message is its first cause."""


class GraphCache:
    """Captured graphs by key (graph name, buffer addresses), bounded; graphs that cannot be captured."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"a graph cache holds at least one graph, got limit {limit}")
        self.limit = limit
        self.graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self.failed: dict[str, str] = {}  # graph name -> why its capture failed
        self.captured = 0
        self.evicted = 0

    def action(self, name: str, key: Hashable, enabled: bool = True) -> str:
        """'replay' a captured graph, 'capture' one (after a plain run), or 'run' without one."""
        if not enabled or name in self.failed:
            return "run"
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return "replay"
        return "capture"

    def store(self, key: Hashable, graph: Any) -> None:
        self.graphs[key] = graph
        self.captured += 1
        while len(self.graphs) > self.limit:
            self.graphs.popitem(last=False)
            self.evicted += 1

    def fail(self, name: str, reason: str) -> None:
        self.failed[name] = reason

    def stats(self) -> dict:
        return {
            "graphs": len(self.graphs),
            "captured": self.captured,
            "evicted": self.evicted,
            "not_capturable": dict(self.failed),
        }


def run_cached(
    cache: GraphCache,
    name: str,
    key: Hashable,
    *,
    enabled: bool,
    run: Callable[[], Any],
    capture: Callable[[], Any],
    replay: Callable[[Any], Any],
) -> Any:
    """One call of graph ``name``: replay its captured graph, or run it plainly (the first call
    doubles as the warm-up a capture needs) and capture it for the next calls. A failed capture
    is remembered with a warning; the call's result is the plain run's, so nothing is lost."""
    action = cache.action(name, key, enabled)
    if action == "replay":
        return replay(cache.graphs[key])
    out = run()
    if action == "capture":
        try:
            cache.store(key, capture())
        except CaptureFailed as e:
            cache.fail(name, str(e))
            warnings.warn(
                f"{name}: CUDA-graph capture failed ({e}); it runs without a CUDA graph from now on",
                RuntimeWarning,
                stacklevel=2,
            )
    return out


def capture(work: Callable[[], Any], stream: torch.cuda.Stream, pool) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Capture ``work`` into a CUDA graph on ``stream`` with the memory ``pool``; (graph, work's
    result). A failing ``work`` is not raised inside the capture, so the capture always ends and
    the error reported is the first one."""
    g = torch.cuda.CUDAGraph()
    cause: BaseException | None = None
    result = None
    try:
        with torch.cuda.graph(g, pool=pool, stream=stream):
            try:
                result = work()
            except Exception as e:  # end the capture first, then report
                cause = e
    except Exception as e:  # ending an invalidated capture
        cause = cause or e
    if cause is not None:
        torch.cuda.synchronize()
        raise CaptureFailed(f"{type(cause).__name__}: {cause}") from cause
    return g, result


class BufferPool:
    """Persistent zeroed buffers by (spec, index): the same memory each time they are asked for."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[tuple, Tensor] = {}

    def take(self, spec: TensorSpec, index: int = 0) -> Tensor:
        key = (spec.name, tuple(spec.shape), spec.dtype, index)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(spec.shape, dtype=spec.torch_dtype, device=self.device)
        return self.buffers[key].zero_()

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers.values())
