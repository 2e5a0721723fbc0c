"""TensorRT backend: what can be checked without a GPU, and GPU tests that skip with a reason."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from varrt.engines.trt_config import (
    Binding,
    BuildConfig,
    Target,
    TrtCompatibilityError,
    cache_key,
    check_binding,
    check_engine_manifest,
    check_trt_version,
    component_profiles,
    profile_shapes,
    timing_cache_path,
)
from varrt.export.artifact import read_manifest
from varrt.runtime.cli import main

H100 = Target("10.13.2.6", "NVIDIA H100 80GB HBM3", "9.0")


def test_build_config_is_validated():
    with pytest.raises(ValueError, match="--opt-level must be 0..5"):
        BuildConfig(opt_level=7)
    with pytest.raises(ValueError, match="--workspace must be > 0"):
        BuildConfig(workspace_gib=0)
    assert BuildConfig().resolved() == {
        "opt_level": 3,
        "workspace_gib": 4.0,
        "max_aux_streams": 0,
        "tf32": True,
        "timing_cache": True,
    }


def test_old_tensorrt_is_refused():
    check_trt_version("10.12.0.36")
    check_trt_version("11.4.0.106")
    with pytest.raises(TrtCompatibilityError, match="TensorRT 10.8.0 is too old"):
        check_trt_version("10.8.0")


def test_one_profile_per_static_graph(tiny_artifact):
    m = read_manifest(tiny_artifact)
    graphs = component_profiles(m, "transformer")
    assert [g.name for g in graphs] == [g.name for g in m.graphs if g.component == "transformer"]
    shapes = profile_shapes(graphs[0])
    assert shapes["x"] == (2, 1, 32) and shapes["kv"] == (2, 2, 2, 2, 680, 64) and shapes["pos_idx"] == (2, 1)
    with pytest.raises(ValueError, match="no transformer_fastvar graphs"):
        component_profiles(m, "transformer_fastvar")


def test_cache_key_depends_on_what_the_engine_depends_on(tiny_artifact):
    m = read_manifest(tiny_artifact)
    key = cache_key(m, "transformer", BuildConfig(), H100)
    assert key == cache_key(m, "transformer", BuildConfig(), H100)
    assert key != cache_key(m, "transformer", BuildConfig(opt_level=5), H100)
    assert key != cache_key(m, "transformer", BuildConfig(), dataclasses.replace(H100, trt_version="11.4.0.106"))
    assert key != cache_key(m, "transformer", BuildConfig(), dataclasses.replace(H100, compute_capability="8.9"))
    assert key != cache_key(m, "decoder", BuildConfig(), H100)
    assert timing_cache_path(H100).name == "trt10.13.2.6-sm90.cache"


def test_engine_from_another_machine_is_refused_before_deserialising():
    meta = {"tensorrt": "10.13.2.6", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    check_engine_manifest(meta, H100, "engine.plan")
    other = Target("11.4.0.106", "NVIDIA L4", "8.9")
    with pytest.raises(TrtCompatibilityError) as e:
        check_engine_manifest(meta, other, "engine.plan")
    msg = str(e.value)
    assert "TensorRT 10.13.2.6 (here 11.4.0.106)" in msg and "compute capability 9.0 (here 8.9)" in msg
    assert "varrt build" in msg


def aligned_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor starting on a 256-byte boundary (CUDA's allocator gives that; the CPU's gives 64)."""
    n, item = int(torch.tensor(shape).prod()), torch.tensor([], dtype=dtype).element_size()
    raw = torch.zeros(n + 256 // item, dtype=dtype)
    offset = (-raw.data_ptr() % 256) // item
    return raw[offset : offset + n].view(shape)


def test_binding_checks_on_cpu_tensors():
    b = Binding("kv", (2, 4, 8), torch.float16)
    base = aligned_zeros((4, 4, 8), torch.float16)
    check_binding(base[:2], b)  # the conditional half of the cache: a contiguous, aligned view
    with pytest.raises(ValueError, match="not contiguous"):
        check_binding(
            torch.zeros(4, 8, 2, dtype=torch.float16).transpose(1, 2), Binding("kv", (4, 2, 8), torch.float16)
        )
    with pytest.raises(ValueError, match="dtype torch.float32"):
        check_binding(torch.zeros(2, 4, 8), b)
    with pytest.raises(ValueError, match=r"shape \(3, 4, 8\)"):
        check_binding(aligned_zeros((3, 4, 8), torch.float16), b)
    with pytest.raises(ValueError, match="not 256-byte aligned"):
        check_binding(base.view(-1)[1:65].view(2, 4, 8), b)


def test_doctor_and_inspect_on_cpu(tiny_artifact, capsys):
    assert main(["doctor"]) == 0
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "tensorrt" in err and "CPUExecutionProvider" in err
    assert main(["inspect", str(tiny_artifact)]) == 0
    err = capsys.readouterr().err
    assert "transformer_r2_n256_m256_t680" in err and "KV capacity" in err
    assert main(["inspect", str(tiny_artifact / "transformer.onnx")]) == 0
    assert "TensorRT op check" in capsys.readouterr().err
    assert main(["inspect", str(tiny_artifact / "nope")]) == 2


def test_build_without_tensorrt_says_how_to_get_it(tiny_artifact, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["build", str(tiny_artifact)]) == 2
        assert "pip install 'varrt[trt]'" in capsys.readouterr().err
    else:
        pytest.skip("TensorRT is installed here; this test is about machines without it")


def test_compare_torch_and_ort_with_polygraphy(tiny_artifact, capsys):
    from helpers import tiny_var, tiny_vqvae
    from varrt.engines.ort_engine import OrtEngine
    from varrt.engines.torch_engine import TorchEngine
    from varrt.runtime.inspect import compare_backends

    engines = {"torch": TorchEngine(tiny_var(2), tiny_vqvae()), "ort": OrtEngine(tiny_artifact)}
    args = type(
        "A",
        (),
        {
            "artifact": tiny_artifact,
            "graphs": "transformer_r2_n16_m16_t680,decoder_b1",
            "backends": "torch,ort",
            "seed": 0,
        },
    )()
    from varrt.runtime.console import console

    console.print(compare_backends(args, engines.__getitem__))
    assert "all pass" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ GPU only
def _gpu_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'varrt[trt]' from NVIDIA's index)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU; none is visible to torch")


def test_tensorrt_matches_ort_token_for_token(tiny_artifact):
    _gpu_tensorrt()
    from varrt.engines.ort_engine import OrtEngine
    from varrt.engines.tensorrt_engine import TrtEngine
    from varrt.runtime.generate import generate

    ref = generate(OrtEngine(tiny_artifact), [3], seed=0)
    got = generate(TrtEngine(tiny_artifact), [3], seed=0)
    assert all(torch.equal(a, b) for a, b in zip(ref.indices, got.indices))


def test_torch_graph_matches_eager_torch():
    if not torch.cuda.is_available():
        pytest.skip("the torch-graph backend needs a CUDA GPU; none is visible to torch")
    from helpers import tiny_var, tiny_vqvae
    from varrt.engines.torch_engine import TorchEngine
    from varrt.engines.torch_graph_engine import TorchGraphEngine
    from varrt.runtime.generate import generate

    var, vq = tiny_var(2).cuda(), tiny_vqvae().cuda()
    ref = generate(TorchEngine(var, vq), [3, 7], seed=0)
    graph_engine = TorchGraphEngine(var, vq)
    for _ in range(2):  # the second run replays the captured graphs
        got = generate(graph_engine, [3, 7], seed=0)
        assert all(torch.equal(a, b) for a, b in zip(ref.indices, got.indices))
