"""The int8 decoder of an int8 export: what is quantized, when (the SSIM gate, random weights), and
the one-line errors of ``--decoder-precision``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import tiny_source, tiny_var, tiny_vqvae
from varrt.engines.ort_engine import OrtEngine
from varrt.export import exporter
from varrt.export.artifact import read_manifest
from varrt.export.exporter import ExportConfig, Quantizer, quantized_component
from varrt.export.trt_ops import unsupported_ops
from varrt.runtime.artifacts import ExportRequest, ensure_artifact
from varrt.runtime.cli import main
from varrt.runtime.decoder_gate import decoder_fidelity

PATCH_NUMS = (1, 2, 3, 4)


def latents(decoder: onnx.ModelProto, n: int, side: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    channels = decoder.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(seed)
    return [{"f_hat": rng.standard_normal((1, channels, side, side)).astype(np.float32)} for _ in range(n)]


def test_random_weights_keep_the_decoder_fp32_unless_asked():
    """auto cannot gate random weights (their images say nothing), so it keeps fp32 and int8-cpu
    records no calibration; --decoder-precision int8 quantizes ungated and calibrates; each is its
    own export key."""
    source = tiny_source()
    auto, forced, off = (
        ExportRequest(source, ("full",), 1, ExportConfig(precision="int8-cpu", decoder=d))
        for d in ("auto", "int8", "fp32")
    )
    assert auto.decoder_plan() == "fp32" and auto.calibration() is None
    assert auto.identity()["quantization"]["recipe"]["decoder"]["plan"] == "fp32"
    assert forced.decoder_plan() == "int8" and forced.calibration() is not None
    assert "Percentile 99.99" in forced.identity()["quantization"]["recipe"]["decoder"]["activations"]
    trained = ExportRequest({"var": {"sha256": "a"}, "vae": {"sha256": "b"}}, ("full",), 1, ExportConfig("int8-cpu"))
    assert trained.decoder_plan() == "gated"
    fp8 = ExportRequest(source, ("full",), 1, ExportConfig(precision="fp8"))
    assert fp8.decoder_plan() == "fp32"
    assert auto.key() == off.key() != forced.key()  # auto on random weights is the fp32 decoder's export


def test_an_int8_decoder_is_qdq_but_its_last_conv_and_onnx_runtime_runs_it(tmp_path):
    """TensorRT's int8 with --decoder-precision int8: the decoder is the artifact's own Q/DQ graph
    (zero points 0, TensorRT's op check passes), its last Conv reads fp32, and the artifact runs."""
    models = tiny_var(2, patch_nums=PATCH_NUMS), tiny_vqvae(patch_nums=PATCH_NUMS)
    config = ExportConfig(precision="int8", calibrate=1, decoder="int8")
    request = ExportRequest(tiny_source(patch_nums=PATCH_NUMS), ("full",), 1, config)
    artifact = ensure_artifact(request, lambda: models, out=tmp_path / "a")
    m = read_manifest(artifact)
    dec = m.quantization["components"]["decoder"]
    assert dec["precision"].startswith("int8 (not gated") and dec["calibration_feeds"] == 1
    assert m.components["decoder"]["file"] == "decoder.onnx" and (artifact / "decoder.onnx.data").is_file()
    model = onnx.load(str(artifact / "decoder.onnx"), load_external_data=False)
    assert unsupported_ops(model, str(artifact)) == []
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert dec["quantized_convs"] == len(convs) - 1 and dec["fp32_convs_kept"] == [convs[-1].name]
    assert all(producer[c.input[0]].op_type == "DequantizeLinear" for c in convs[:-1])
    assert producer[convs[-1].input[0]].op_type != "DequantizeLinear"
    engine = OrtEngine(artifact)
    assert engine.manifest.precision == "int8"


@pytest.mark.parametrize("gate", [0.0, 1.01])
def test_the_gate_keeps_int8_or_leaves_the_fp32_decoder(tiny_artifact, tmp_path, monkeypatch, gate):
    """The gate measures the int8 decoder's images against fp32's on held-out latents: at or
    above the bar the int8 graph is the artifact's, below it nothing of it is left."""
    monkeypatch.setattr(exporter, "DECODER_GATE", gate)
    fp32 = tiny_artifact / "decoder.onnx"
    model = onnx.load(str(fp32), load_external_data=False)
    calibration, held_out = latents(model, 2, 4), latents(model, 2, 4, seed=1)
    record: dict = {}
    quantizer = Quantizer(
        "int8-cpu", {"decoder": calibration}, record, lambda _m: None, "gated",
        lambda a, b: decoder_fidelity(a, b, held_out),
    )  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    rewritten = quantized_component("decoder", fp32, work, quantizer)
    fidelity = record["decoder"]["fidelity_vs_fp32"]
    assert fidelity["images"] == 2 and 0 <= fidelity["ssim"]["mean"] <= 1
    if gate == 0.0:
        assert rewritten is not None and record["decoder"]["precision"] == "int8"
        assert (work / "decoder.onnx").is_file() and rewritten[0]["file"] == "decoder.onnx"
    else:
        assert rewritten is None and record["decoder"]["precision"] == "fp32"
        assert sorted(p.name for p in work.iterdir()) == []


def test_the_same_decoder_scores_ssim_one(tiny_artifact):
    graph = tiny_artifact / "decoder.onnx"
    fid = decoder_fidelity(graph, graph, latents(onnx.load(str(graph), load_external_data=False), 2, 4))
    assert fid["ssim"]["mean"] == pytest.approx(1.0) and fid["images"] == 2


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--decoder-precision", "int8"], "--decoder-precision int8 needs --precision int8 or int8-cpu"),
        (["--precision", "fp8", "--decoder-precision", "int8"], "needs --precision int8 or int8-cpu (got fp8)"),
        (["--precision", "int8-cpu", "--decoder-precision", "fp32", "--calibrate", "2"], "--calibrate sets"),
    ],
)
def test_bad_decoder_precision_is_one_line(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.setenv("VARRT_CACHE", str(tmp_path / "cache"))
    rc = main(["export", "--random-weights", "--model", "var-tiny-d2", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("varrt export: error: ") and match in lines[0], err
    assert not (tmp_path / "cache" / "exports").exists(), "checked before any export"
