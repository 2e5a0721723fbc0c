"""``varrt bench``'s report: ratios against the full plan of the same backend, whatever the order."""

from __future__ import annotations

import torch

from varrt.engines.torch_engine import TorchEngine
from varrt.runtime.bench import BenchConfig, run_bench
from varrt.runtime.flops import plan_flops
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.policies import make_policy


def test_flops_ratios_are_against_full_even_when_full_is_not_first(tiny_models):
    cfg = tiny_models[0].cfg
    config = BenchConfig(labels=[3, 7], warmup=0, repeat=1)
    report = run_bench({"torch": Pipeline(TorchEngine(*tiny_models))}, ["stagevar", "full"], config, {})
    rows = {r["policy"]: r for r in report["results"]}
    total = lambda spec: sum(f.total for f in plan_flops(cfg, make_policy(spec, cfg).plans[0]))  # noqa: E731
    assert rows["full"]["flops_ratio_vs_full"] == 1.0
    assert abs(rows["stagevar"]["flops_ratio_vs_full"] - total("stagevar") / total("full")) < 1e-9
    assert rows["full"]["flops_per_image"] == total("full")


def test_report_records_where_it_was_measured_and_lands_whole(tiny_models, tmp_path):
    import json

    from varrt.runtime.bench import write_report

    config = BenchConfig(labels=[3], warmup=0, repeat=2)
    report = run_bench({"torch": Pipeline(TorchEngine(*tiny_models))}, ["full"], config, {})
    paths = write_report(report, tmp_path / "results", "tiny")
    stored = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert {"date", "command", "commit", "machine", "versions"} <= set(stored)
    assert (stored["warmup"], stored["repeat"]) == (0, 2) and stored["versions"]["torch"] == torch.__version__
    assert {p.suffix for p in paths} >= {".json", ".md"}
    assert not list((tmp_path / "results").glob("*.tmp"))  # written to a temporary name, then renamed
