"""The compiled backends' logic that needs no GPU: bindings of every exported graph, TensorRT's
log in errors, the CUDA-graph capture decision and its fallback, the weights check, torch.compile's
recompile limit, persistent KV buffers across group splits."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch

from varrt.engines.base import EngineError
from varrt.engines.cuda_graphs import BufferPool, CaptureFailed, GraphCache, run_cached
from varrt.engines.trt_bindings import IOTensor, onnx_io, plan_bindings, scratch_layout
from varrt.engines.trt_config import WEIGHTS_SLACK, left_out_bytes, scratch_bytes, weights_check
from varrt.engines.trt_log import TrtLog
from varrt.export.artifact import read_manifest


# ------------------------------------------------------------------------------------------ bindings
@pytest.mark.parametrize("fixture", ["tiny_artifact", "policy_artifact", "infinity_artifact"])
def test_every_graph_binds_every_io_tensor_of_its_component(fixture, request):
    """An engine is built from the component ONNX, so its I/O is that file's: every static graph
    must feed all of its inputs, and the outputs it leaves out go to scratch memory."""
    artifact = request.getfixturevalue(fixture)
    m = read_manifest(artifact)
    io = {
        c: onnx_io(onnx.load(str(artifact / meta["file"]), load_external_data=False))
        for c, meta in m.components.items()
    }
    scratch = set()
    for graph in m.graphs:
        plan = plan_bindings(io[graph.component], graph)
        outputs = {t.name for t in io[graph.component] if not t.is_input}
        assert set(plan.outputs) | set(plan.scratch) == outputs, graph.name
        assert set(plan.inputs) == {t.name for t in io[graph.component] if t.is_input}, graph.name
        scratch |= {(graph.component, n) for n in plan.scratch}
        assert set(plan.scratch) == set(left_out_bytes(graph)), graph.name
    if fixture != "tiny_artifact":  # FastVAR's pruned scales leave the deltas out, StageVAR's last scale its state
        assert {n for _, n in scratch} == {"new_deltas", "new_kv", "chunk_hidden"}
        assert scratch_bytes(m) > 0


def test_bindings_that_cannot_cover_a_graph_are_refused(tiny_artifact):
    m = read_manifest(tiny_artifact)
    graph = next(g for g in m.graphs if g.component == "transformer")
    io = onnx_io(onnx.load(str(tiny_artifact / "transformer.onnx"), load_external_data=False))
    plan_bindings(io, graph)
    missing = [t for t in io if t.name != "hidden"]
    with pytest.raises(EngineError, match="output 'hidden' is not an output of the engine"):
        plan_bindings(missing, graph)
    extra = [*io, IOTensor("mask", True, "float32")]
    with pytest.raises(EngineError, match="needs input 'mask', which the graph does not feed"):
        plan_bindings(extra, graph)
    retyped = [IOTensor(t.name, t.is_input, "float16" if t.name == "x" else t.dtype) for t in io]
    with pytest.raises(EngineError, match="input 'x' is float32 in the graph, float16 in the engine"):
        plan_bindings(retyped, graph)


def test_scratch_outputs_are_packed_on_256_byte_boundaries():
    assert scratch_layout([10, 256, 1]) == ([0, 256, 512], 768)
    assert scratch_layout([]) == ([], 256)


# ------------------------------------------------------------------------------------------ the log
def test_tensorrt_messages_are_kept_filtered_and_quoted():
    log = TrtLog("WARNING", tail=3)
    log.add("VERBOSE", "tactic 17")
    log.add("INFO", "building")
    assert log.quote() == "" and list(log.messages) == []
    for i in range(4):
        log.add("WARNING", f"w{i}")
    log.add("ERROR", "engine plan file is not compatible with this version of TensorRT")
    assert [m for _, m in log.messages] == [
        "w2",
        "w3",
        "engine plan file is not compatible with this version of TensorRT",
    ]
    err = log.error("TensorRT could not deserialise engine.plan.")
    assert isinstance(err, EngineError)
    assert str(err) == (
        "TensorRT could not deserialise engine.plan. TensorRT said: "
        "[ERROR] engine plan file is not compatible with this version of TensorRT"
    )
    build = TrtLog("INFO", keep_all=True)
    for i in range(100):
        build.add("INFO", f"m{i}")
    assert len(build.text().splitlines()) == 100 and build.quote() == ""  # info is not quoted as a cause
    with pytest.raises(ValueError, match="severity"):
        TrtLog("LOUD")


# ------------------------------------------------------------------------------------------ CUDA graphs
class Recorder:
    """Counts what run_cached asked for; its 'graphs' are plain objects (no GPU here)."""

    def __init__(self, capture_error: str | None = None) -> None:
        self.runs = self.captures = self.replays = 0
        self.capture_error = capture_error

    def run(self):
        self.runs += 1
        return "plain"

    def capture(self):
        self.captures += 1
        if self.capture_error:
            raise CaptureFailed(self.capture_error)
        return "graph"

    def replay(self, graph):
        self.replays += 1
        return f"replayed {graph}"


def call(cache, rec, name="g", key=("g", 1), enabled=True):
    return run_cached(cache, name, key, enabled=enabled, run=rec.run, capture=rec.capture, replay=rec.replay)


def test_first_call_runs_and_captures_then_replays():
    cache, rec = GraphCache(), Recorder()
    assert call(cache, rec) == "plain" and (rec.runs, rec.captures) == (1, 1)
    assert call(cache, rec) == "replayed graph" and call(cache, rec) == "replayed graph"
    assert (rec.runs, rec.captures, rec.replays) == (1, 1, 2)
    assert call(cache, rec, key=("g", 2)) == "plain"  # another KV address: its own capture
    assert cache.stats()["captured"] == 2
    off = Recorder()
    assert [call(GraphCache(), off, enabled=False) for _ in range(2)] == ["plain", "plain"] and off.captures == 0


def test_a_failed_capture_falls_back_to_plain_runs_with_a_warning():
    cache, rec = GraphCache(), Recorder("EngineError: TensorRT failed to enqueue g. TensorRT said: [ERROR] capture")
    with pytest.warns(RuntimeWarning, match="g: CUDA-graph capture failed .*TensorRT said: \\[ERROR\\] capture"):
        assert call(cache, rec) == "plain"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        assert call(cache, rec) == "plain" and call(cache, rec, key=("g", 9)) == "plain"
    assert (rec.runs, rec.captures, rec.replays) == (3, 1, 0)
    assert cache.stats()["not_capturable"] == {
        "g": "EngineError: TensorRT failed to enqueue g. TensorRT said: [ERROR] capture"
    }
    other = Recorder()
    call(cache, other, name="h", key=("h", 1))
    assert other.captures == 1  # only the graph that failed is given up


def test_captured_graphs_are_bounded():
    cache, rec = GraphCache(limit=3), Recorder()
    for k in range(5):
        call(cache, rec, key=("g", k))
    assert list(cache.graphs) == [("g", 2), ("g", 3), ("g", 4)] and cache.stats()["evicted"] == 2
    call(cache, rec, key=("g", 2))  # a replay makes it the most recent
    call(cache, rec, key=("g", 5))
    assert list(cache.graphs) == [("g", 4), ("g", 2), ("g", 5)]
    with pytest.raises(ValueError):
        GraphCache(limit=0)


# ------------------------------------------------------------------------------------------ weights
def test_duplicated_weights_are_a_warning_with_the_figures():
    ok = weights_check(total_weights=1000, plan_bytes=5000, onnx_bytes=1000)
    assert ok.shared and ok.message("transformer") is None and ok.source == "TOTAL_WEIGHTS_SIZE"
    doubled = weights_check(total_weights=2 * 2**20, plan_bytes=3 * 2**20, onnx_bytes=2**20)
    assert doubled.shared is False
    assert f"more than {WEIGHTS_SLACK} x the 1 MiB" in doubled.message("transformer")
    old = weights_check(total_weights=None, plan_bytes=int(1.1 * 2**20), onnx_bytes=2**20)  # TensorRT < 10.14
    assert old.shared and old.source == "plan size" and old.to_dict()["shared"] is True


# ------------------------------------------------------------------------------------------ compile
def test_compiled_graphs_are_not_dropped_to_eager_after_eight_shapes():
    """Every static graph is one specialisation of a module: dynamo's default limit (8) would run
    the ninth shape eagerly, silently."""
    from varrt.engines.torch_graph_engine import compiled

    class Plain(torch.nn.Module):  # a fresh class: dynamo keeps its cache per code object
        def forward(self, x):
            return x * 2 + 1

    class Lifted(torch.nn.Module):
        def forward(self, x):
            return x * 2 + 1

    def counting(counter):
        def backend(gm, _inputs):
            counter.append(1)
            return gm.forward

        return backend

    plain, lifted = [], []
    f = torch.compile(Plain(), backend=counting(plain), dynamic=False)
    g = compiled(Lifted(), backend=counting(lifted))
    for rows in range(1, 13):
        x = torch.randn(rows, 3)
        assert torch.equal(f(x), x * 2 + 1) and torch.equal(g(x), x * 2 + 1)
    assert len(plain) == 8 and len(lifted) == 12


# ------------------------------------------------------------------------------------------ KV buffers
class PooledTorchEngine:
    """The eager engine with a compiled engine's persistent KV buffers (BufferPool on the CPU):
    the runtime's buffer reuse, seen without a GPU."""

    def __init__(self, engine) -> None:
        self.inner, self.buffers, self.kv_addresses = engine, BufferPool(engine.device), set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def allocate(self, spec, index=0):
        return self.buffers.take(spec, index)

    def run(self, graph, feeds):
        if "kv" in feeds:
            self.kv_addresses.add((graph.name, feeds["kv"].data_ptr()))
        return self.inner.run(graph, feeds)


def test_group_splits_reuse_the_same_kv_buffers_every_generation(tiny_models):
    """A policy that splits a batch (SkipVAR, LD-Pruning) copies rows into a new group; those copies
    used to be fresh tensors, so a compiled engine saw new KV addresses (new CUDA graphs) every
    generation. Now the n-th buffer of a shape is the same memory in every generation."""
    from dataclasses import replace

    from varrt.engines.torch_engine import TorchEngine
    from varrt.runtime.generate import generate
    from varrt.runtime.plan import Plan
    from varrt.runtime.policies import Policy

    sched = tiny_models[0].cfg.schedule
    full = Plan.full(sched)
    cond = Plan("cond-late", tuple(replace(s, cfg="cond") if si >= 6 else s for si, s in enumerate(full.scales)), "")

    class Alternate(Policy):  # sample 0 keeps CFG, sample 1 drops it after scale 4
        name, split_from = "alternate", 5

        def after_scale(self, state):
            return torch.tensor([0, 1]) if state.si == 4 else None

    policy = Alternate((full, cond))
    engine = PooledTorchEngine(TorchEngine(*tiny_models))
    first = generate(engine, [1, 2], seed=0, policy=policy)
    seen, pool = set(engine.kv_addresses), len(engine.buffers.buffers)
    second = generate(engine, [1, 2], seed=0, policy=policy)
    assert first.plans == ["full", "cond-late"] and pool == 3  # the batch's buffer, then one per group
    assert engine.kv_addresses == seen and len(engine.buffers.buffers) == pool
    plain = generate(TorchEngine(*tiny_models), [1, 2], seed=0, policy=policy)
    for a, b, c in zip(first.indices, second.indices, plain.indices):
        assert torch.equal(a, c) and torch.equal(b, c)
