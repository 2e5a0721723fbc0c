"""A command line that tells the truth: results on stdout and progress on stderr, ``--json`` where
a result is data, ``--quiet`` quiet, labels printed as written, ``varrt bench`` exporting the
baseline it compares against, and a speed-vs-SSIM plot that shows the table's numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from varrt.runtime.cli import main

TINY = ["--random-weights", "--model", "var-tiny-d2"]


def run(capsys, *argv: str) -> tuple[str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out, captured.err


def test_version(capsys):
    from varrt.export.artifact import varrt_version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"varrt {varrt_version()}"


def test_plan_show_targets_the_demo_model_by_default_on_stdout(capsys):
    out, err = run(capsys, "plan", "show", "fastvar")
    assert "fastvar on var-demo" in out and "16x16" in out and not err.strip()
    data = json.loads(run(capsys, "plan", "show", "fastvar", "--json")[0])
    last = data["plans"][0]["scales"][-1]
    assert data["model"] == "var-demo" and last["grid"] == [16, 16] and last["tokens"] < last["of_tokens"]
    assert 0 < data["plans"][0]["share_of_full"] < 1


def test_doctor_and_inspect_print_results_on_stdout_and_as_json(tiny_artifact, capsys):
    out, _ = run(capsys, "doctor")
    assert "onnxruntime" in out
    info = json.loads(run(capsys, "doctor", "--json")[0])
    assert info["varrt"] and "providers" in info["onnxruntime"]
    out, _ = run(capsys, "inspect", str(tiny_artifact))
    assert "static graphs" in out
    data = json.loads(run(capsys, "inspect", str(tiny_artifact), "--json")[0])
    assert data["kind"] == "artifact" and data["graphs"] and "var-tiny-d2" in data["summary"]["model"]
    onnx = json.loads(run(capsys, "inspect", str(tiny_artifact / "transformer.onnx"), "--json")[0])
    assert onnx["kind"] == "onnx" and "pos_idx" in onnx["summary"]["inputs"]


def test_progress_label_keeps_backend_and_policy_and_quiet_is_quiet(tmp_path, capsys):
    _, err = run(capsys, "generate", *TINY, "--class", "1", "--backend", "torch", "--out", str(tmp_path / "a"))
    assert "var-tiny-d2 [torch, full]" in err  # not swallowed as a markup tag
    assert "sampling: cfg 4.0, top_k 900, top_p 0.95 (defaults: the official sampler's)" in err
    out, err = run(capsys, "generate", *TINY, "--class", "1", "--quiet", "--out", str(tmp_path / "b"))
    assert not out and "export" not in err and "reusing" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("warning: --random-weights")
    ]  # only the warning that the images are noise


def test_artifact_runs_at_the_sampling_defaults_of_its_weights(tiny_artifact, tmp_path, capsys):
    _, err = run(capsys, "generate", "--artifact", str(tiny_artifact), "--class", "1", "--out", str(tmp_path))
    assert "cfg 4.0, top_k 900, top_p 0.95" in err  # random weights: the official settings, said so


def test_bench_exports_the_full_baseline_and_reports_json(tmp_path, capsys):
    argv = ["bench", *TINY, "--policy", "stagevar", "--backends", "ort", "--repeat", "1", "--warmup", "0"]
    out, _ = run(capsys, *argv, "--fidelity-seeds", "0", "--out-dir", str(tmp_path), "--json")
    report = json.loads(out)
    assert {r["policy"] for r in report["results"]} == {"full", "stagevar"}
    assert (tmp_path / "var-tiny-d2-b1.json").exists() and report["model"]["weights"] == "random (var-tiny-d2)"


def test_speed_vs_ssim_plot_shows_the_tables_speedups(tiny_models, policy_artifact):
    """The plot used evaluate()'s one-off timing of the fidelity pass (one backend, untimed seeds),
    so its speed-ups contradicted the table; now each (backend, policy) point is the table's."""
    from varrt.engines.ort_engine import OrtEngine
    from varrt.engines.torch_engine import TorchEngine
    from varrt.runtime.bench import BenchConfig, run_bench
    from varrt.runtime.bench_plots import speed_fidelity_figure
    from varrt.runtime.pipeline import Pipeline

    pipes = {"torch": Pipeline(TorchEngine(*tiny_models)), "ort": Pipeline(OrtEngine(policy_artifact))}
    # the policy artifact is exported for batch 3: bench at that batch
    config = BenchConfig(labels=[3, 7, 1], warmup=0, repeat=1, fidelity_seeds=1)
    report = run_bench(pipes, ["full", "stagevar"], config, {})
    table = sorted((r["speedup_vs_full"], report["fidelity"][r["policy"]]["ssim"]["mean"]) for r in report["results"])
    fig = speed_fidelity_figure(report)
    plotted = sorted(tuple(map(float, xy)) for c in fig.axes[0].collections for xy in c.get_offsets())
    assert len(plotted) == 4  # one point per backend and policy, as in the table
    np.testing.assert_allclose(np.array(plotted), np.array(table), rtol=1e-9)
