"""ONNX export: one weights file, static graphs, checks, parity with torch, clear errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import onnx
import pytest
import torch

from helpers import tiny_source
from varrt.engines.base import BackendUnavailable, EngineError
from varrt.engines.compare import compare, random_feeds
from varrt.engines.ort_engine import OrtEngine, session_options
from varrt.engines.torch_engine import TorchEngine
from varrt.export.artifact import ArtifactError, read_manifest
from varrt.export.exporter import ExportConfig, ExportError, check_static_shapes
from varrt.export.graphs import StepShape, transformer_spec
from varrt.export.onnx_export import specialize
from varrt.export.trt_ops import unsupported_ops
from varrt.runtime.artifacts import ExportRequest, ensure_artifact
from varrt.runtime.generate import generate
from varrt.runtime.sampling import SamplingConfig


def test_manifest_lists_every_static_graph(tiny_artifact, tiny_models):
    m = read_manifest(tiny_artifact)
    var, _ = tiny_models
    names = [g.name for g in m.graphs]
    assert names[0] == "conditioner_r2" and names[-1] == "decoder_b1"
    assert [n for n in names if n.startswith("transformer")] == [
        f"transformer_r2_n{pn * pn}_m{pn * pn}_p{max(1, begin)}_t680"
        for pn, (begin, _) in zip(var.cfg.patch_nums, var.cfg.schedule.begin_ends)
    ]
    assert m.opset == 20 and m.precision == "float32" and m.kv_capacity == 680 and m.batch == 1
    # the static shapes are the manifest's list: no per-shape file is written (no backend runs one)
    assert sorted(p.name for p in tiny_artifact.glob("*.onnx")) == [
        "conditioner.onnx",
        "decoder.onnx",
        "transformer.onnx",
    ]
    raw = json.loads((tiny_artifact / "manifest.json").read_text())
    assert raw["schedule"] == list(var.cfg.patch_nums) and raw["varrt_version"]
    assert raw["validation"]["parity"]["max_relative_error"]


def test_weights_are_stored_once(tiny_artifact, tiny_models):
    """All component graphs point into one weights.bin of about one copy of the weights."""
    var, vqvae = tiny_models
    param_bytes = sum(p.numel() * 4 for p in (*var.parameters(), *vqvae.decoder.parameters()))
    weights = (tiny_artifact / "weights.bin").stat().st_size
    assert weights < 1.1 * param_bytes
    graphs = list(tiny_artifact.glob("*.onnx"))
    assert len(graphs) == 3
    for g in graphs:
        model = onnx.load(str(g), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations <= {"weights.bin"}, g.name
        assert g.stat().st_size < 0.1 * weights, f"{g.name} carries weights of its own"


def test_static_shapes_are_checked_in_memory(tiny_artifact):
    """Each static shape is the component graph with its dims fixed (checked at export, never
    written); a shape the graph cannot take fails the export naming the graph."""
    manifest = read_manifest(tiny_artifact)
    spec = manifest.graph("transformer_r2_n25_m25_p30_t680")
    dyn = onnx.load(str(tiny_artifact / "transformer.onnx"), load_external_data=False)
    assert [d.dim_param for d in dyn.graph.input[0].type.tensor_type.shape.dim][:2] == ["rows", "tokens"]
    m = specialize(dyn, spec)
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input]
    assert all(all(v > 0 for v in d) for d in dims)
    assert not [n for n in m.graph.node if n.op_type == "Shape"]
    check_static_shapes(tiny_artifact, manifest.components, manifest.graphs)  # what the export ran
    logits = spec.outputs[0]
    wrong = dataclasses.replace(
        spec, outputs=(dataclasses.replace(logits, shape=(logits.shape[0] + 1, *logits.shape[1:])), *spec.outputs[1:])
    )
    with pytest.raises(ExportError, match=r"do not take their static shapes:\n  transformer_r2_n25_m25_p30_t680: "):
        check_static_shapes(tiny_artifact, manifest.components, [wrong])


def test_every_graph_passes_the_tensorrt_op_check(tiny_artifact):
    for g in tiny_artifact.glob("*.onnx"):
        assert unsupported_ops(onnx.load(str(g), load_external_data=False)) == [], g.name
        onnx.checker.check_model(str(g), full_check=True)


def test_op_check_catches_what_tensorrt_cannot_parse():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])
    clip_in = onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, [4])
    clip_out = onnx.helper.make_tensor_value_info("o", onnx.TensorProto.INT64, [4])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Unique", ["x"], ["y"], name="uniq"), onnx.helper.make_node("Clip", ["i"], ["o"])],
        "g",
        [x, clip_in],
        [y, clip_out],
    )
    problems = unsupported_ops(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)]))
    assert any(p.startswith("Unique (uniq): not supported") for p in problems)
    assert any("Clip" in p and "INT64" in p for p in problems)


def test_per_scale_parity_torch_vs_ort(tiny_artifact, tiny_models):
    engine = OrtEngine(tiny_artifact)
    diffs = compare(TorchEngine(*tiny_models), engine, read_manifest(tiny_artifact).graphs, seed=3)
    assert diffs and max(d.rel for d in diffs) <= 1e-4


def test_ort_workers_stop_spinning_when_a_run_returns(tiny_artifact):
    """The runtime's torch work between two calls gets the cores: after a run, ORT's intra-op
    workers burn no CPU while the caller waits (ORT's default keeps them spinning)."""
    with pytest.raises(ValueError, match="spinning must be one of run, always, never"):
        session_options(2, spinning="sometimes")
    assert session_options(2).get_session_config_entry("session.force_spinning_stop") == "1"
    engine = OrtEngine(tiny_artifact, threads=2)
    graph = next(g for g in read_manifest(tiny_artifact).graphs if g.name.startswith("transformer_r2_n256_"))
    feeds = random_feeds(graph, 680, 1000, seed=0)
    engine.run(graph, feeds)
    engine.run(graph, feeds)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(0.05)  # with ORT's default, a worker burns a whole core for about this long
    assert time.process_time() - cpu0 < 0.3 * (time.perf_counter() - wall0)


def test_a_step_reads_only_the_live_prefix_of_the_cache(tiny_artifact, tiny_models):
    """``kv_bias`` covers the P slots a call reads from the fixed-capacity buffer: whatever the
    buffer holds after them (here NaN) is never read, on either backend."""
    graph = next(g for g in read_manifest(tiny_artifact).graphs if g.name.startswith("transformer_r2_n256_"))
    p, t = graph.input("kv_bias").shape[0], graph.input("kv").shape[4]
    assert 1 < p < t
    feeds = random_feeds(graph, 680, 1000, seed=0)
    dirty = feeds["kv"].clone()
    dirty[:, :, :, :, p:] = torch.nan
    for engine in (TorchEngine(*tiny_models), OrtEngine(tiny_artifact)):
        clean, got = engine.run(graph, feeds), engine.run(graph, {**feeds, "kv": dirty})
        for name in ("logits", "new_kv", "hidden"):
            assert torch.isfinite(got[name]).all() and torch.equal(got[name], clean[name]), (engine.backend, name)
    # each block reads its keys and its values with one Slice of the cache (block, kind, live slots),
    # not a chain of slices that would first copy the block's whole capacity
    model = onnx.load(str(tiny_artifact / "transformer.onnx"), load_external_data=False)
    reads = [n for n in model.graph.node if "kv" in n.input and n.op_type != "Shape"]
    assert [n.op_type for n in reads] == ["Slice"] * 2 * tiny_models[0].cfg.depth
    consts = {
        n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"
    }
    assert all(consts[n.input[3]].tolist() == [1, 2, 4] for n in reads)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ort_samples_the_same_tokens_as_torch(tiny_artifact, tiny_models, seed):
    sampling = SamplingConfig(cfg=4, top_k=900, top_p=0.95)
    ref = generate(TorchEngine(*tiny_models), [207], seed=seed, sampling=sampling)
    got = generate(OrtEngine(tiny_artifact), [207], seed=seed, sampling=sampling)
    for si, (a, b) in enumerate(zip(ref.indices, got.indices)):
        assert torch.equal(a, b), f"scale {si}"
    assert (ref.images - got.images).abs().max() <= 1e-3


def test_export_is_reused_by_hash(tiny_artifact):
    request = ExportRequest(tiny_source(), ("full",), 1, ExportConfig())

    def must_not_load():
        raise AssertionError("a matching export must be reused without loading the models")

    assert ensure_artifact(request, must_not_load, out=tiny_artifact) == tiny_artifact


@pytest.mark.slow
def test_foreign_export_is_refused_then_replaced_with_force(tmp_path, tiny_artifact, tiny_models):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    other = ExportRequest(tiny_source(), ("full",), 2, ExportConfig())
    with pytest.raises(ArtifactError, match=r"holds another export \(the batch \(1 vs 2\)"):
        ensure_artifact(other, lambda: tiny_models, out=out, validate=False)
    ensure_artifact(other, lambda: tiny_models, out=out, force=True, validate=False)
    assert read_manifest(out).batch == 2


def test_missing_file_is_named(tmp_path, tiny_artifact):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    (out / "transformer.onnx").unlink()
    with pytest.raises(ArtifactError, match="transformer.onnx is missing"):
        OrtEngine(out)


def test_corrupt_weights_are_detected(tmp_path, tiny_artifact):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    data = bytearray((out / "weights.bin").read_bytes())
    data[1000] ^= 0xFF
    (out / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.bin does not match its sha256"):
        OrtEngine(out)
    (out / "weights.bin").write_bytes(bytes(data[:-10]))
    with pytest.raises(ArtifactError, match="truncated or replaced"):
        OrtEngine(out)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        OrtEngine(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ArtifactError, match="not a varrt artifact manifest"):
        OrtEngine(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        OrtEngine(tmp_path / "nope")


def test_graph_outside_the_artifact(tiny_artifact):
    """ONNX Runtime runs other shapes of an exported structure, never another structure."""
    engine = OrtEngine(tiny_artifact)
    other_rows = transformer_spec(engine.var_config, StepShape(rows=4, tokens=1, outputs=1, capacity=680, past=1))
    assert engine.has_graph(other_rows)
    layers = transformer_spec(
        engine.var_config, StepShape(rows=2, tokens=1, outputs=1, capacity=680, layers=(0,), past=1)
    )
    assert not engine.has_graph(layers)
    with pytest.raises(EngineError, match=r"transformer_layers.* was not exported .* re-export"):
        engine.run(layers, {})


def test_ort_runs_a_batch_the_artifact_was_not_exported_for(tiny_artifact, tiny_models):
    """A batch-1 artifact on ONNX Runtime (symbolic sessions) generates batch 3 exactly as torch does."""
    assert read_manifest(tiny_artifact).batch == 1
    sampling = SamplingConfig(cfg=4, top_k=900, top_p=0.95)
    ref = generate(TorchEngine(*tiny_models), [207, 3, 88], seed=5, sampling=sampling)
    got = generate(OrtEngine(tiny_artifact), [207, 3, 88], seed=5, sampling=sampling)
    for si, (a, b) in enumerate(zip(ref.indices, got.indices)):
        assert a.shape[0] == 3 and torch.equal(a, b), f"scale {si}"


def test_unavailable_provider_fails_loudly(tiny_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the missing-provider path needs a CPU-only build")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        OrtEngine(tiny_artifact, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
