"""Quantized exports: the transformer's weight matmuls in int8 or fp8, calibrated on real generations.

Batch-1 VAR is bound by reading weights (var-d16: 1.2 GB of fp32 per step at the first scales), so
the weight matmuls are where low precision pays. The step graphs are exported in fp32 as usual;
this module then rewrites each transformer component with ``onnxruntime.quantization`` (the field's
library; no hand-written quantizer):

- ``int8``: static QDQ. Weights int8, per output channel, symmetric (zero point 0); activations
  int8, per tensor, symmetric, their ranges calibrated (MinMax) on the inputs each component saw in
  a few real generations. Zero points are 0 and the ops are plain ONNX QuantizeLinear /
  DequantizeLinear, which is what TensorRT's explicit quantization needs (TensorRT 11 has no INT8
  flag), and what ONNX Runtime's CPU provider fuses into integer matmuls.
- ``int8-cpu``: ONNX Runtime's dynamic form (DynamicQuantizeLinear + MatMulInteger; activation
  scales computed per call, no calibration; 7-bit weights). ONNX Runtime only: TensorRT's parser
  lacks DynamicQuantizeLinear, so this precision is refused by ``varrt build``. This is the fast
  form on x86 CPUs without AVX512-VNNI: ONNX Runtime runs ``int8``'s symmetric s8 x s8 QDQ there
  slower than fp32 (four var-d16-size MLP blocks, 2 to 512 rows, AVX2 without VNNI: 0.16x-1.05x
  of fp32; the dynamic form 1.4x-3.1x, output error 0.6-0.7 % with 7-bit weights, 2.7-6.5 % with
  8-bit ones: benchmarks/results/int8-forms-d16-mlp.md, tools/bench_int8_forms.py).
- ``fp8``: E4M3 Q/DQ for TensorRT (Hopper / Ada), the same calibration generations (ONNX Runtime
  calibrates float8 with its Distribution method only). ONNX Runtime's CPU provider runs these
  graphs as their ONNX semantics say (dequantize, then an fp32 matmul): a numerics check, not a
  speed-up. Nothing here can run them in FP8 arithmetic.

What stays fp32 in every recipe: norms, softmax, the attention matmuls (activation x activation),
the logits head, the sampler (the runtime) and the conditioner (once per image).

The decoder (a third of a var-d16 batch-1 generation on the CPU, untouched by every policy) is
int8 only if its images keep mean SSIM >= ``DECODER_GATE`` against the fp32 decoder's, measured at
export time on held-out generations (other seeds than the calibration's); otherwise it stays fp32
(``--decoder-precision auto``, the default). Every Conv but the last is quantized statically, per
output channel, activations calibrated with ORT's Percentile method at 99.99 (its default 99.999
clips too little: demo model, 32 held-out images, mean SSIM 0.975 at 99.999 with the edge convs
fp32, 0.984 at 99.99 with only the last conv fp32; the last conv reads the SiLU after the last norm
and is the one that needs fp32: benchmarks/results/int8-decoder.md). ``int8-cpu`` takes ONNX
Runtime's fast CPU form (u8 activations, 7-bit weights), ``int8`` TensorRT's symmetric s8 x s8.
Random weights cannot be gated (their images say nothing), so ``auto`` keeps their decoder fp32;
``--decoder-precision int8`` quantizes it ungated (the manifest says so), ``fp32`` never.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from varrt.export.graphs import COMPONENTS

#: precisions whose graphs are quantized after export; their graphs' inputs and outputs stay fp32
QUANTIZED = ("int8", "int8-cpu", "fp8")
#: every precision ``varrt export --precision`` takes
PRECISIONS = ("float32", "float16", "bfloat16", *QUANTIZED)
#: quantized precisions whose graphs TensorRT's parser takes
TENSORRT_QUANTIZED = ("int8", "fp8")
#: the components that carry the transformer blocks, read off the graph contract so that a new
#: step graph (a policy's variant) is quantized too; every other component stays fp32
TRANSFORMER_COMPONENTS = tuple(c for c in COMPONENTS if c.startswith("transformer"))


def io_precision(precision: str) -> str:
    """The dtype of a graph's inputs, outputs and KV cache: fp32 for the quantized precisions."""
    return "float32" if precision in QUANTIZED else precision


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one varrt exports; --precision takes {', '.join(PRECISIONS)}")
    return precision


def recipe(precision: str, decoder: str = "fp32") -> dict:
    """The quantization recipe of ``precision`` with the decoder's :func:`decoder_plan`, as the
    manifest records it and the export key hashes it."""
    return {**_transformer_recipe(precision), "decoder": decoder_recipe(precision, decoder)}


def _transformer_recipe(precision: str) -> dict:
    import onnxruntime

    base = {
        "library": f"onnxruntime.quantization {onnxruntime.__version__}",
        "quantized": "MatMul nodes with a weight operand in the transformer components, the logits head excluded",
        "fp32": "norms, softmax, attention matmuls, logits head, sampler, conditioner, KV cache",
    }
    if precision == "int8":
        return {
            **base,
            "format": "QDQ (QuantizeLinear / DequantizeLinear, opset ops only)",
            "weights": "int8, per output channel, symmetric (zero point 0)",
            "activations": "int8, per tensor, symmetric (zero point 0), MinMax over the calibration generations",
        }
    if precision == "int8-cpu":
        return {
            **base,
            "format": "dynamic (DynamicQuantizeLinear + MatMulInteger): ONNX Runtime only, not TensorRT",
            "weights": "int8 with a 7-bit range (reduce_range: no int16 saturation on CPUs without VNNI), per output "
            "channel, symmetric",
            "activations": "uint8, per tensor, asymmetric, computed per call (no calibration)",
        }
    if precision == "fp8":
        return {
            **base,
            "format": "QDQ (QuantizeLinear / DequantizeLinear to FLOAT8E4M3FN)",
            "weights": "float8 e4m3fn, per tensor, symmetric",
            "activations": "float8 e4m3fn, per tensor, symmetric, Distribution calibration over the calibration "
            "generations",
        }
    raise ValueError(f"{precision!r} is not a quantized precision ({', '.join(QUANTIZED)})")


#: ``--decoder-precision``: gated int8 (auto), int8 ungated, or fp32
DECODER_MODES = ("auto", "int8", "fp32")
#: the mean SSIM vs the fp32 decoder's images an int8 decoder must keep (issue 18)
DECODER_GATE = 0.98
#: the quantized precisions whose decoder may be int8 (fp8's decoder stays fp32)
INT8_DECODER = ("int8", "int8-cpu")


def decoder_plan(precision: str, mode: str, random_weights: bool) -> str:
    """What an export does with the decoder: ``fp32``, ``int8`` (asked for, not gated) or
    ``gated`` (int8 if it passes the gate on held-out generations)."""
    if precision not in INT8_DECODER or mode == "fp32":
        return "fp32"
    if mode == "int8":
        return "int8"
    return "fp32" if random_weights else "gated"


def decoder_recipe(precision: str, plan: str) -> dict:
    """The decoder's part of a quantization recipe (recorded in the manifest, hashed into the key)."""
    if plan == "fp32":
        why = (
            "--decoder-precision fp32, or auto on random weights (the SSIM gate needs trained weights)"
            if precision in INT8_DECODER
            else f"{precision} quantizes the transformer only"
        )
        return {"plan": "fp32", "why": why}
    cpu = precision == "int8-cpu"
    return {
        "plan": plan,
        "gate": f"int8 only if mean SSIM vs the fp32 decoder >= {DECODER_GATE} on held-out generations"
        if plan == "gated"
        else "none: int8 asked for (--decoder-precision int8)",
        "quantized": "every Conv but the last (QDQ)",
        "weights": "int8, per output channel, symmetric"
        + (", 7-bit range (reduce_range); biases int32" if cpu else "; biases float (TensorRT)"),
        "activations": ("uint8, per tensor, asymmetric" if cpu else "int8, per tensor, symmetric (zero point 0)")
        + ", Percentile 99.99 over the calibration generations' f_hat",
    }


def quantized_components(decoder: str) -> tuple[str, ...]:
    """The components a quantized export rewrites: the transformer's, and the decoder unless its
    plan (``decoder``: :func:`decoder_plan`) is fp32."""
    return (*TRANSFORMER_COMPONENTS, *(("decoder",) if decoder != "fp32" else ()))


def calibrated_components(precision: str, decoder: str = "fp32") -> tuple[str, ...]:
    """The components whose feeds the calibration generations record: those with static
    activation scales (int8-cpu's matmuls quantize dynamically: its decoder only, if int8)."""
    if precision not in QUANTIZED:
        return ()
    rewritten = quantized_components(decoder)
    return tuple(c for c in rewritten if c == "decoder") if precision == "int8-cpu" else rewritten


def needs_calibration(precision: str, decoder: str = "fp32") -> bool:
    """Whether an export records calibration generations (``decoder``: its :func:`decoder_plan`)."""
    return bool(calibrated_components(precision, decoder))


def weight_matmuls(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(the MatMul nodes to quantize, those kept fp32): every MatMul whose second operand is a
    weight (an initializer, possibly through a Transpose / Cast of one) is quantized, except the
    logits head — the last weight matmul before the ``logits`` output."""
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def is_weight(name: str) -> bool:
        while name not in inits:
            node = producer.get(name)
            if node is None or node.op_type not in ("Transpose", "Cast", "Identity", "Reshape"):
                return False
            name = node.input[0]
        return True

    weights = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and is_weight(n.input[1])]
    head = _head_matmul(model, producer, set(weights))
    return [w for w in weights if w != head], [head] if head else []


def _head_matmul(model: onnx.ModelProto, producer: Mapping[str, onnx.NodeProto], weights: set[str]) -> str | None:
    """The weight matmul nearest to the ``logits`` output, walking back through its producers."""
    outputs = [o.name for o in model.graph.output if o.name == "logits"]
    todo, seen = list(outputs), set()
    while todo:
        name = todo.pop(0)
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in weights:
            return node.name
        todo.extend(node.input)
    return None


class FeedReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over recorded feeds, in their order (the
    calibration is deterministic for a given set). The quantizer reads it one call at a time
    (``set_range``, its ``CalibStridedMinMax`` option): its histogram collector cannot stack
    tensors of different shapes, and every scale has its own."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], inputs: Iterable[str]) -> None:
        names = set(inputs)
        self._feeds = [{k: v for k, v in f.items() if k in names} for f in feeds]
        self._next, self._end = 0, len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._feeds))

    def rewind(self) -> None:
        self._next, self._end = 0, len(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Silence onnxruntime.quantization while it runs: its "consider pre-processing" warnings go
    to the root logger, and its Percentile calibrater prints its progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_component(src: Path, dst: Path, precision: str, feeds: Sequence[Mapping[str, np.ndarray]] | None) -> dict:
    """Rewrite the exported fp32 component ``src`` (+ external data) as ``precision`` into ``dst``
    (+ ``dst``.data); returns what was quantized (node counts, the head kept fp32)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    model = onnx.load(str(src), load_external_data=False)
    nodes, kept = weight_matmuls(model)
    inputs = [i.name for i in model.graph.input]
    del model
    summary = {"quantized_matmuls": len(nodes), "fp32_matmuls_kept": kept}
    if not nodes:
        raise ValueError(f"{src.name}: no weight matmuls to quantize")
    with quiet_quantizer():
        if precision == "int8-cpu":
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=nodes,
                per_channel=True,
                # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 pairs into saturating int16
                # sums (VPMADDUBSW); the full range overflows them (measured: 6x the error, same speed)
                reduce_range=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=True,
                extra_options={"MatMulConstBOnly": True},
            )
            return summary
        if not feeds:
            raise ValueError(f"{src.name}: {precision} needs calibration feeds (no generation ran it)")
        reader = FeedReader(feeds, inputs)
        CalibrationDataReader.register(FeedReader)
        fp8 = precision == "fp8"
        qtype = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
        quantize_static(
            src,
            dst,
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=not fp8,
            activation_type=qtype,
            weight_type=qtype,
            use_external_data_format=True,
            calibrate_method=CalibrationMethod.Distribution if fp8 else CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                "CalibStridedMinMax": 1,
            },
        )
        summary["calibration_feeds"] = len(reader)
        return summary


def quantize_decoder(src: Path, dst: Path, precision: str, feeds: Sequence[Mapping[str, np.ndarray]] | None) -> dict:
    """Rewrite the exported fp32 decoder ``src`` as ``precision``'s int8 decoder into ``dst`` (see
    the module docstring for the recipe); returns what was quantized."""
    from onnxruntime.quantization import CalibrationDataReader

    if not feeds:
        raise ValueError(f"{src.name}: an int8 decoder needs calibration feeds (no generation decoded)")
    convs = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "Conv"]
    cpu = precision == "int8-cpu"
    reader = FeedReader(feeds, ["f_hat"])
    CalibrationDataReader.register(FeedReader)
    with quiet_quantizer():
        _quantize_convs(src, dst, reader, convs[-1:], cpu)
    return {"quantized_convs": len(convs) - 1, "fp32_convs_kept": convs[-1:], "calibration_feeds": len(reader)}


def _quantize_convs(src: Path, dst: Path, reader: FeedReader, kept: list[str], cpu: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        src,
        dst,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=kept,  # the last conv reads the SiLU after the last norm: fp32
        per_channel=True,
        reduce_range=cpu,
        activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        use_external_data_format=True,
        extra_options={
            "ActivationSymmetric": not cpu,
            "WeightSymmetric": True,
            "CalibPercentile": 99.99,
            # TensorRT takes int8 / fp8 Q/DQ only: its biases stay float (ORT's CPU form fuses int32 ones)
            "QuantizeBias": cpu,
        },
    )
