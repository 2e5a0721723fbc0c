"""Quantized exports (int8 Q/DQ, int8-cpu, fp8) of a tiny model: TensorRT-parsable graphs, logits
close to fp32 on real generations, deterministic calibration, one-line errors for bad values."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from helpers import tiny_source, tiny_var, tiny_vqvae
from varrt.engines.ort_engine import OrtEngine
from varrt.engines.torch_engine import TorchEngine
from varrt.export.artifact import read_manifest
from varrt.export.exporter import ExportConfig
from varrt.export.quantize import quantize_component
from varrt.export.trt_ops import unsupported_ops
from varrt.runtime.artifacts import ExportRequest, ensure_artifact
from varrt.runtime.cli import main

PATCH_NUMS = (1, 2, 3, 4)
#: int8 vs fp32 logits of the tiny random-weights model, per scale, teacher-forced on a real
#: generation's inputs (a seed outside the calibration set): max |error| / max |fp32 logits|.
#: Measured 0.005 / 0.065 / 0.056 / 0.092 (rms error / rms: 0.005-0.075); a broken scale (a
#: calibration that missed a tensor's range, a transposed channel axis) gives O(1).
LOGITS_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def models():
    return tiny_var(2, patch_nums=PATCH_NUMS), tiny_vqvae(patch_nums=PATCH_NUMS)


def export(models, tmp_path, precision: str, calibrate: int | None = 2, name: str | None = None):
    config = ExportConfig(precision=precision, calibrate=calibrate if precision in ("int8", "fp8") else None)
    request = ExportRequest(tiny_source(patch_nums=PATCH_NUMS), ("full",), 1, config)
    return ensure_artifact(request, lambda: models, out=tmp_path / (name or precision)), request


@pytest.fixture(scope="module")
def int8_artifact(models, tmp_path_factory):
    return export(models, tmp_path_factory.mktemp("q"), "int8")[0]


def graph_files(artifact):
    return sorted(artifact.glob("*.onnx"))


def test_int8_graphs_are_qdq_that_tensorrt_parses(int8_artifact):
    m = read_manifest(int8_artifact)
    assert m.precision == "int8"
    assert m.quantization["recipe"]["weights"].startswith("int8, per output channel, symmetric")
    cal = m.quantization["calibration"]
    assert cal["generations"] == 2 and cal["seeds"] == [0, 1] and cal["labels"] == [[0], [1]]
    assert "random weights" in cal["note"]
    # the token embedding, then qkv, proj, fc1, fc2 of each of the 2 blocks (the head stays fp32)
    assert m.quantization["components"]["transformer"]["quantized_matmuls"] == 1 + 4 * 2
    for f in graph_files(int8_artifact):
        model = onnx.load(str(f), load_external_data=False)
        assert unsupported_ops(model, str(int8_artifact)) == [], f.name
    model = onnx.load(str(int8_artifact / "transformer.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") >= 2 * ops.count("MatMul") // 3 and "QuantizeLinear" in ops
    inits = {t.name: t for t in model.graph.initializer}
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert int8_weights, "weights are stored as int8"
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = onnx.numpy_helper.to_array(inits[n.input[2]])
            assert not np.any(zp), f"{n.name}: zero point must be 0 for TensorRT"
    producer = {o: n for n in model.graph.node for o in n.output}
    head = producer["logits"]
    while head.op_type != "MatMul":
        head = producer[head.input[0]]
    assert producer[head.input[1]].op_type != "DequantizeLinear" if head.input[1] in producer else True
    assert head.name in m.quantization["components"]["transformer"]["fp32_matmuls_kept"]
    io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io["kv"] == io["logits"] == onnx.TensorProto.FLOAT


def test_int8_logits_close_to_fp32_on_a_generation(int8_artifact, models):
    """Teacher-forced: both engines get the same real per-scale inputs (those of the fp32 run)."""
    from varrt.runtime.calibration import RecordingEngine
    from varrt.runtime.generate import generate

    rec = RecordingEngine(*models, ["transformer"])
    generate(rec, [5], seed=7, capacity=read_manifest(int8_artifact).kv_capacity)
    ref, q = TorchEngine(*models), OrtEngine(int8_artifact)
    graphs = {g.name: g for g in q.manifest.graphs if g.component == "transformer"}
    errors = []
    for feeds in rec.feeds["transformer"]:
        rows, tokens = feeds["x"].shape[:2]
        past = feeds["kv_bias"].shape
        graph = next(
            g for g in graphs.values() if g.input("x").shape[:2] == (rows, tokens) and g.input("kv_bias").shape == past
        )
        full = {t.name: torch.from_numpy(feeds[t.name]) for t in graph.inputs if t.name in feeds}
        cap = graph.input("kv").shape[-2]
        live = full["kv"].shape[-2]  # recorded: the P slots the call reads; the graph takes the whole buffer
        full["kv"] = torch.nn.functional.pad(full["kv"], (0, 0, 0, cap - live))
        r, c = ref.run(graph, full)["logits"], q.run(graph, full)["logits"]
        errors.append(float((r - c).abs().max() / r.abs().max()))
    assert len(errors) == len(PATCH_NUMS)
    assert max(errors) <= LOGITS_TOLERANCE, errors
    assert max(errors) > 0, "int8 graphs computing exactly fp32 means nothing was quantized"


@pytest.fixture(scope="module")
def tiny_feeds(tiny_models, tiny_artifact):
    """The calibration feeds of the session's fp32 artifact (depth 2, ten scales), recorded twice."""
    from varrt.runtime.calibration import Calibration, record_feeds
    from varrt.runtime.policies import make_policy

    cal = Calibration(generations=1, batch=1, sampling=(("cfg", 4.0), ("top_k", 900), ("top_p", 0.95)))
    policy = make_policy("full", tiny_models[0].cfg)
    cap = read_manifest(tiny_artifact).kv_capacity
    return [record_feeds(*tiny_models, [policy], cal, cap)["transformer"] for _ in range(2)]


def test_calibration_is_deterministic(tiny_artifact, tiny_feeds, tmp_path):
    """The same calibration set gives the same feeds and the same int8 graph and weights, byte for byte."""
    first, second = tiny_feeds
    assert len(first) == len(second) == 10
    for a, b in zip(first, second):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    outs = []
    for i, feeds in enumerate(tiny_feeds):
        dst = tmp_path / f"q{i}" / "transformer.int8.onnx"
        dst.parent.mkdir()
        quantize_component(tiny_artifact / "transformer.onnx", dst, "int8", feeds)
        outs.append((digest(dst), digest(dst.with_name(dst.name + ".data"))))
    assert outs[0] == outs[1]


def test_a_quantized_export_in_the_cache_shares_the_fp32_pack_and_keeps_its_own_weights(models, tmp_path, monkeypatch):
    """int8-cpu after fp32 (same checkpoint, in the cache): the fp32 components come from the pack
    the fp32 export traced (nothing traced or appended again), the quantized transformer is the
    artifact's own graph + data file, and the pack holds nothing the quantizer wrote."""
    from varrt.export.pack import INDEX, packs_dir

    monkeypatch.setenv("VARRT_CACHE", str(tmp_path / "cache"))
    source = tiny_source(patch_nums=PATCH_NUMS)
    fp32 = ensure_artifact(ExportRequest(source, ("full",), 1, ExportConfig()), lambda: models, validate=False)
    (pack,) = [p for p in packs_dir().iterdir() if p.is_dir()]
    before = sorted(p.name for p in pack.iterdir()), (pack / "weights.bin").stat().st_size
    messages = []
    request = ExportRequest(source, ("full",), 1, ExportConfig(precision="int8-cpu"))
    q = ensure_artifact(request, lambda: models, say=messages.append)
    assert q != fp32 and [p for p in packs_dir().iterdir() if p.is_dir()] == [pack]
    assert (sorted(p.name for p in pack.iterdir()), (pack / "weights.bin").stat().st_size) == before
    assert not [m for m in messages if m.startswith("export ")], messages  # every component reused
    m, f = read_manifest(q), read_manifest(fp32)
    assert m.components["conditioner"] == f.components["conditioner"]
    assert m.components["decoder"] == f.components["decoder"] and m.files["weights.bin"]["shared"]
    assert m.components["transformer"]["file"] == "transformer.onnx" and (q / "transformer.onnx.data").is_file()
    assert m.files["transformer.onnx.data"]["sha256"] == m.components["transformer"]["weights_sha256"]
    assert m.quantization["components"]["transformer"]["quantized_matmuls"] == 1 + 4 * 2
    assert m.validation["tensorrt_ops"].startswith("not checked: int8-cpu")
    assert m.validation["parity"]["quantized_vs_fp32_max_relative_error"]
    assert json.loads((pack / INDEX).read_text())["identity"]["precision"] == "float32"
    OrtEngine(q)  # its files (the pack's and its own) verify, and ONNX Runtime loads them


def test_export_key_holds_precision_and_calibration():
    requests = [
        ExportRequest(tiny_source(), ("full",), 1, ExportConfig(precision=p, calibrate=c))
        for p, c in (("float32", None), ("int8", None), ("int8", 3), ("fp8", None), ("int8-cpu", None))
    ]
    assert len({r.key() for r in requests}) == len(requests)
    assert requests[1].identity()["quantization"]["calibration"]["generations"] == 4  # the default
    assert requests[2].identity()["quantization"]["calibration"]["generations"] == 3
    assert requests[4].identity()["quantization"]["calibration"] is None


@pytest.mark.parametrize("precision", ["int8-cpu", "fp8"])
def test_int8_cpu_and_fp8_graphs(tiny_artifact, tiny_feeds, tmp_path, precision):
    dst = tmp_path / f"transformer.{precision}.onnx"
    quantize_component(tiny_artifact / "transformer.onnx", dst, precision, tiny_feeds[0])
    model = onnx.load(str(dst), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if precision == "int8-cpu":  # ONNX Runtime's dynamic form: not for TensorRT, and the check says so
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
        assert any("DynamicQuantizeLinear" in p for p in unsupported_ops(model, str(tmp_path)))
        # 7-bit weights (reduce_range): no saturating int16 sums on CPUs without VNNI
        inits = onnx.load(str(dst)).graph.initializer  # with the external data
        weights = [onnx.numpy_helper.to_array(t) for t in inits if t.data_type == onnx.TensorProto.INT8]
        assert weights and all(abs(int(w.min())) <= 64 and int(w.max()) <= 64 for w in weights)
        return
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert unsupported_ops(model, str(tmp_path)) == []
    fp8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN and len(t.dims) == 2]
    assert fp8, "fp8 weights"


def test_tensorrt_check_rejects_asymmetric_and_uint8_qdq():
    from onnx import TensorProto, helper

    def graph(zp_type, zp_value):
        zp = helper.make_tensor("zp", zp_type, [], [zp_value])
        sc = helper.make_tensor("sc", TensorProto.FLOAT, [], [0.1])
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="q"),
            helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"], name="dq"),
        ]
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
            [zp, sc],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])

    assert unsupported_ops(graph(TensorProto.INT8, 0)) == []
    assert any("zero point is not 0" in p for p in unsupported_ops(graph(TensorProto.INT8, 3)))
    assert any("TensorRT takes INT8 or FP8" in p for p in unsupported_ops(graph(TensorProto.UINT8, 0)))


TINY = ["--random-weights", "--model", "var-tiny-d2"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--precision", "int4"], "precision 'int4' is not one varrt exports"),
        (["--precision", "float32", "--calibrate", "4"], "--calibrate sets the calibration of an int8 / fp8"),
        (["--precision", "int8", "--calibrate", "0"], "--calibrate takes the number of calibration generations"),
    ],
)
def test_bad_precision_is_one_line(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.setenv("VARRT_CACHE", str(tmp_path / "cache"))
    rc = main(["export", *TINY, *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("varrt export: error: ") and match in lines[0], err
    assert not (tmp_path / "cache" / "exports").exists(), "checked before any export"


def test_compare_measures_a_quantized_artifact(int8_artifact, models, capsys):
    """`varrt compare` on an int8 artifact: every graph measured against fp32 torch (no tolerance
    applies to a quantized recipe on random feeds), not a KeyError on the precision."""
    from varrt.runtime.console import console
    from varrt.runtime.inspect import compare_backends

    engines = {"torch": TorchEngine(*models), "ort": OrtEngine(int8_artifact)}
    args = type("A", (), {"artifact": int8_artifact, "graphs": None, "backends": "torch,ort", "seed": 0})()
    result, ok = compare_backends(args, engines.__getitem__)
    console.print(result, width=400)
    assert ok
    out = capsys.readouterr().err
    flat = " ".join(out.split())  # rich wraps a long title where the terminal width puts it
    assert "(int8, quantized): error vs torch measured, no tolerance" in flat and "no NaN/Inf" in flat, out
    graphs = read_manifest(int8_artifact).graphs
    rows = [line for line in out.splitlines() if "torch vs ort" in line]
    assert len(rows) == len(graphs) and all("measured" in r for r in rows), out
    errors = {g.name: float(r.split()[-2]) for g, r in zip(graphs, rows)}
    transformer = [e for name, e in errors.items() if name.startswith("transformer")]
    assert transformer and all(e > 0 for e in transformer), errors  # the int8 graphs are not fp32's


@pytest.mark.slow  # traces three step graphs (a minute on 2 cores)
def test_stagevar_step_graphs_are_quantized(models, tmp_path, monkeypatch):
    """StageVAR's chunk-output and low-rank step graphs are transformer components like every
    policy's variant (the quantizer reads them off the graph contract): int8 (calibrated on
    StageVAR's own calls) and int8-cpu exports quantize each, and ONNX Runtime runs them in the
    validation. Both exports share one pack (traced once)."""
    from varrt.export.graphs import COMPONENTS
    from varrt.export.quantize import TRANSFORMER_COMPONENTS

    assert set(COMPONENTS) - set(TRANSFORMER_COMPONENTS) == {"conditioner", "decoder"}
    monkeypatch.setenv("VARRT_CACHE", str(tmp_path / "cache"))
    source = tiny_source(patch_nums=PATCH_NUMS)
    for precision, op in (("int8-cpu", "MatMulInteger"), ("int8", "QuantizeLinear")):
        config = ExportConfig(precision=precision, calibrate=1 if precision == "int8" else None)
        artifact = ensure_artifact(ExportRequest(source, ("full", "stagevar"), 1, config), lambda: models)
        m = read_manifest(artifact)
        steps = {c for c in m.components if c not in ("conditioner", "decoder")}
        assert steps == {"transformer", "transformer_stagevar", "transformer_chunks"}, precision
        assert set(m.quantization["components"]) == steps, precision
        for comp in steps:
            q = m.quantization["components"][comp]
            assert q["quantized_matmuls"] > 0, (precision, comp)
            assert precision == "int8-cpu" or q["calibration_feeds"] > 0, (precision, comp)
            graph = onnx.load(str(artifact / m.components[comp]["file"]), load_external_data=False)
            assert op in {n.op_type for n in graph.graph.node}, (precision, comp)
        assert set(m.validation["parity"]["quantized_vs_fp32_max_relative_error"]) == {g.name for g in m.graphs}
