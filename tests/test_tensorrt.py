"""TensorRT backend: what can be checked without a GPU, and GPU tests that skip with a reason."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from varrt.engines.trt_bindings import Binding, check_binding
from varrt.engines.trt_config import (
    BuildConfig,
    Target,
    TrtCompatibilityError,
    cache_key,
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
    assert BuildConfig(tf32=False).resolved()["tf32"] is False
    assert BuildConfig().resolved() == {
        "opt_level": 3,
        "workspace_gib": 4.0,
        "max_aux_streams": 0,
        "tf32": True,
        "timing_cache": True,
    }


def test_tensorrt_outside_the_written_api_range_is_refused():
    check_trt_version("10.12.0.36")
    check_trt_version("11.4.0.106")
    with pytest.raises(TrtCompatibilityError, match=r"TensorRT 10.8.0 is outside the range .* \(10.12 to 11.x"):
        check_trt_version("10.8.0")
    with pytest.raises(TrtCompatibilityError, match="TensorRT 12.0.1 is outside"):
        check_trt_version("12.0.1")


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
    assert timing_cache_path(H100).name == "trt10.13.2.6-sm90-nvidia-h100-80gb-hbm3.cache"
    pcie = dataclasses.replace(H100, gpu_name="NVIDIA H100 PCIe")  # same SM, another timing
    assert timing_cache_path(pcie) != timing_cache_path(H100)


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
    on_gpu = Binding("kv", (2, 4, 8), torch.float16, torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"on cpu \(engine: cuda:0\)"):
        check_binding(base[:2], on_gpu)


def test_doctor_and_inspect_on_cpu(tiny_artifact, capsys):
    # reports are results: stdout (progress and errors go to stderr)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "tensorrt" in out and "CPUExecutionProvider" in out
    assert main(["inspect", str(tiny_artifact)]) == 0
    out = capsys.readouterr().out
    assert "transformer_r2_n256_m256_p424_t680" in out and "KV capacity" in out
    assert main(["inspect", str(tiny_artifact / "transformer.onnx")]) == 0
    assert "TensorRT op check" in capsys.readouterr().out
    assert main(["inspect", str(tiny_artifact / "nope")]) == 2


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "ARTIFACT", "--no-tf32"],
        ["generate", "--class", "1", "--backend", "trt"],
        ["eval", "--backend", "trt", "--policy", "fastvar"],
        ["bench", "--backends", "torch,trt"],
        ["demo", "--backend", "trt"],
        ["compare", "ARTIFACT", "--backends", "torch,trt"],
    ],
)
def test_tensorrt_verbs_without_tensorrt_say_how_to_get_it_in_one_line(argv, tiny_artifact, capsys):
    """Every verb that runs TensorRT takes --backend trt and, without TensorRT, fails before any
    export or model loading with one line: what is missing and how to install it."""
    if _tensorrt_importable():
        pytest.skip("TensorRT is installed here; this test is about machines without it")
    argv = [str(tiny_artifact) if a == "ARTIFACT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert (
        err.startswith(f"varrt {argv[0]}: error: TensorRT is not installed")
        and "pip install -e '.[gpu,trt-cu12]'" in err
    )
    assert "invalid choice" not in err and "Traceback" not in err


@pytest.mark.parametrize("verb", [["generate", "--class", "1"], ["demo"], ["eval"], ["bench", "--backends"]])
def test_torch_graph_without_a_gpu_is_one_line(verb, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here; this test is about machines without one")
    argv = [*verb, "torch-graph"] if verb[-1] == "--backends" else [*verb, "--backend", "torch-graph"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch-graph needs a CUDA GPU" in err and "On an NVIDIA GPU" in err


def test_doctor_names_what_each_backend_lacks():
    from varrt.runtime.inspect import MachineFacts, missing

    cpu = MachineFacts(None, (), "no nvidia-smi on PATH", ("CPUExecutionProvider",), None, "TensorRT is not installed")
    lacks = missing(cpu)
    assert lacks["ort (CPU)"] == []
    assert any("CUDA build of torch" in m for m in lacks["torch-graph"])
    assert any("TensorRT 10.12-11.x" in m and "trt-cu12" in m for m in lacks["trt"])
    assert any("onnxruntime-gpu" in m for m in lacks["ort (CUDA)"])
    gpu = MachineFacts("12.8", ("NVIDIA H200 (sm 9.0)",), "NVIDIA H200, 570.1", ("CUDAExecutionProvider",), None)
    assert missing(gpu)["torch-graph"] == [] and missing(gpu)["ort (CUDA)"] == []
    assert [m.split(" (")[0] for m in missing(gpu)["trt"]] == ["TensorRT 10.12-11.x"]
    ready = MachineFacts("12.8", ("NVIDIA H200 (sm 9.0)",), "ok", ("CUDAExecutionProvider",), "10.13.2.6")
    assert all(v == [] for v in missing(ready).values())
    no_ort = MachineFacts("12.8", ("G",), "ok", None, "11.4.0.106")
    assert "onnxruntime: pip install -e '.[cpu]'" in missing(no_ort)["ort (CPU)"][0]


def test_build_parses_tf32_and_strict_weights():
    from varrt.runtime.cli import build_parser

    args = build_parser().parse_args(["build", "d16/", "--no-tf32", "--strict-weights"])
    assert args.tf32 is False and args.strict_weights
    assert build_parser().parse_args(["build", "d16/"]).tf32 is True


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
            "graphs": "transformer_r2_n16_m16_p14_t680,decoder_b1",
            "backends": "torch,ort",
            "seed": 0,
        },
    )()
    from varrt.runtime.console import console

    console.print(compare_backends(args, engines.__getitem__)[0])
    assert "all pass" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ GPU only
# Every comparison is on one GPU: the reference is eager torch on the same device (CPU and CUDA
# generators differ, so tokens can only match a CUDA reference), with TF32 off on both sides for
# fp32 (TensorRT turns it on by default; torch's cuDNN too). Tolerances are varrt compare's
# (max |diff| / max |ref|): fp32 1e-3, fp16 1e-2, bf16 2e-2.
PRECISIONS = ["float32", "float16", "bfloat16"]


def _gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; none is visible to torch")


def _gpu_tensorrt() -> None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"TensorRT is not installed ({e}); see README, 'On an NVIDIA GPU'")
    _gpu()


@pytest.fixture
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def gpu_artifact(tmp_path_factory, models, precision: str, policies: tuple[str, ...], batch: int = 2):
    """An export of the tiny model for the GPU tests (only made once a test is not skipped)."""
    from helpers import tiny_source
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.artifacts import ExportRequest, ensure_artifact

    request = ExportRequest(tiny_source(), policies, batch, ExportConfig(precision=precision))
    out = tmp_path_factory.mktemp("gpu") / f"{precision}-{batch}"
    return ensure_artifact(request, lambda: models, out=out)


def cuda_reference(models, precision: str):
    """Eager torch on the GPU computing what a ``precision`` export computes (on copies: the
    session's models stay on the CPU)."""
    from varrt.engines.torch_engine import TorchEngine
    from varrt.export.exporter import precision_models

    var, vq = precision_models(*copy.deepcopy(models), precision)
    return TorchEngine(var.cuda(), vq.cuda())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tensorrt_graphs_match_torch_on_the_same_gpu(precision, tiny_models, plan_file, tmp_path_factory, no_tf32):
    """Every graph (full, FastVAR with and without deltas, budgets, CFG-off rows) per output."""
    _gpu_tensorrt()
    from varrt.engines.compare import compare
    from varrt.engines.tensorrt_engine import TrtEngine
    from varrt.runtime.inspect import TOLERANCES

    artifact = gpu_artifact(tmp_path_factory, tiny_models, precision, ("full", "fastvar", str(plan_file)))
    engine = TrtEngine(artifact, BuildConfig(tf32=False))
    diffs = compare(cuda_reference(tiny_models, precision), engine, read_manifest(artifact).graphs, seed=1)
    _, rtol = TOLERANCES[precision]
    bad = [d for d in diffs if not d.ok(rtol)]
    assert diffs and not bad, bad
    assert any(g.endswith("_nodeltas") for g in engine.contexts)  # scratch-bound outputs ran


@pytest.mark.parametrize("spec", ["full", "fastvar", "plan-file", "skipvar"])
def test_tensorrt_tokens_equal_torch_on_cuda_and_replays(spec, tiny_models, plan_file, tmp_path_factory, no_tf32):
    """Token identity with eager torch on the same GPU and generator (fp32, TF32 off); the second
    generation replays the CUDA graphs captured by the first and captures nothing new."""
    _gpu_tensorrt()
    from varrt.engines.tensorrt_engine import TrtEngine
    from varrt.runtime.generate import generate
    from varrt.runtime.policies import make_policy

    spec = str(plan_file) if spec == "plan-file" else spec
    policy = make_policy(spec, tiny_models[0].cfg)
    artifact = gpu_artifact(tmp_path_factory, tiny_models, "float32", (spec,))
    engine = TrtEngine(artifact, BuildConfig(tf32=False))
    ref = generate(cuda_reference(tiny_models, "float32"), [3, 7], seed=0, policy=policy, capacity=engine.kv_capacity)
    first = generate(engine, [3, 7], seed=0, policy=policy)
    captured = engine.graphs.stats()["captured"]
    second = generate(engine, [3, 7], seed=0, policy=policy)
    assert engine.graphs.stats()["captured"] == captured and not engine.graphs.stats()["not_capturable"]
    for got in (first, second):
        assert got.plans == ref.plans
        for a, b in zip(ref.indices, got.indices):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("spec", ["full", "fastvar", "plan-file"])
def test_torch_graph_matches_eager_torch_and_replays(precision, spec, tiny_models, plan_file, no_tf32):
    """torch-graph runs the eager modules' kernels: tokens identical at every precision, with CFG
    on and off (the plan file drops it for the last scales), first call and replay."""
    _gpu()
    from varrt.engines.torch_graph_engine import TorchGraphEngine
    from varrt.export.exporter import precision_models
    from varrt.runtime.generate import generate
    from varrt.runtime.policies import make_policy

    policy = make_policy(str(plan_file) if spec == "plan-file" else spec, tiny_models[0].cfg)
    ref = generate(cuda_reference(tiny_models, precision), [3, 7], seed=0, policy=policy)
    var, vq = precision_models(*copy.deepcopy(tiny_models), precision)
    engine = TorchGraphEngine(var, vq)
    for run in range(2):
        got = generate(engine, [3, 7], seed=0, policy=policy)
        for a, b in zip(ref.indices, got.indices):
            assert (a is None and b is None) or torch.equal(a, b), f"{spec} {precision}, run {run}"
        if run == 0:
            captured = engine.graphs.stats()["captured"]
    assert engine.graphs.stats()["captured"] == captured  # the second generation only replayed
