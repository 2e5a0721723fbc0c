"""Tracing components side by side in worker processes (export/trace_pool.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from varrt.export.exporter import VarTracer
from varrt.export.trace_pool import JOBS_ENV, export_jobs, trace_side_by_side

JOBS = [("conditioner", None), ("decoder", None)]  # the two cheapest components to trace


def tracer(models) -> VarTracer:
    var, vqvae = models
    return VarTracer(var, vqvae, var, vqvae, "float32", 20)


class FailingTracer:
    """A picklable tracer whose every trace fails (the worker's error path)."""

    def __call__(self, comp: str, blocks, path: Path) -> str:
        raise RuntimeError(f"cannot trace {comp}")


def without_metadata(path: Path) -> onnx.ModelProto:
    """The graph without the exporter's per-node metadata (it names functions by their address in
    the tracing process)."""
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        del node.metadata_props[:]
    return model


def test_workers_trace_the_same_graphs_as_this_process(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv(JOBS_ENV, "2")
    said: list[str] = []
    traced = trace_side_by_side(tracer(tiny_models), JOBS, tmp_path / "pool", said.append)
    assert set(traced) == set(JOBS), said
    assert any("in 2 processes" in m for m in said)
    for comp, blocks in JOBS:
        graph, log = traced[(comp, blocks)]
        here = tmp_path / "here" / comp / graph.name
        here.parent.mkdir(parents=True)
        tracer(tiny_models)(comp, blocks, here)
        assert without_metadata(graph) == without_metadata(here)
        assert graph.with_name(graph.name + ".data").read_bytes() == here.with_name(here.name + ".data").read_bytes()
        assert isinstance(log, str)
    assert not (tmp_path / "pool" / "tracer.pt").exists()  # the models' file does not outlive the pool


def test_a_failed_worker_leaves_its_component_to_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv(JOBS_ENV, "2")
    said: list[str] = []
    assert trace_side_by_side(FailingTracer(), JOBS, tmp_path, said.append) == {}
    failed = [m for m in said if "failed" in m]
    assert len(failed) == 2 and all("cannot trace" in m and "here" in m for m in failed), said


def test_a_tracer_that_does_not_pickle_traces_here(tmp_path, monkeypatch):
    monkeypatch.setenv(JOBS_ENV, "2")
    said: list[str] = []
    assert trace_side_by_side(lambda c, b, p: "", JOBS, tmp_path, said.append) == {}
    assert any("does not pickle" in m for m in said), said


def test_one_job_or_one_worker_traces_here(tmp_path, monkeypatch):
    monkeypatch.setenv(JOBS_ENV, "1")
    assert trace_side_by_side(FailingTracer(), JOBS, tmp_path, print) == {}
    monkeypatch.delenv(JOBS_ENV)
    assert export_jobs(1) == 1 and export_jobs(3) >= 1


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_jobs_value_is_one_line(monkeypatch, value):
    monkeypatch.setenv(JOBS_ENV, value)
    with pytest.raises(ValueError, match=f"{JOBS_ENV}=.*>= 1.*unset it"):
        export_jobs(2)
