"""The sweep's Pareto front and choice (tools/sweep_policies.py) and the policy table's rows
(tools/policy_table.py), on known points and on a real (tiny) ``varrt bench`` report."""

from __future__ import annotations

import sys

from helpers import REPO
from varrt.engines.torch_engine import TorchEngine
from varrt.runtime.bench import BenchConfig, run_bench
from varrt.runtime.pipeline import Pipeline

sys.path.insert(0, str(REPO / "tools"))
import policy_table
import sweep_policies


def point(spec: str, speed: float, ssim: float) -> dict:
    return {"spec": spec, "flops_speedup": speed, "ssim": ssim}


def test_pareto_front_and_the_fastest_point_above_the_bar():
    points = [point("a", 1.2, 0.80), point("b", 1.5, 0.70), point("c", 1.4, 0.65), point("d", 2.0, 0.50)]
    front = sweep_policies.pareto(points)
    assert [p["spec"] for p in front] == ["d", "b", "a"]  # c is beaten by b on both axes
    assert sweep_policies.choose(front, 0.68)["spec"] == "b"
    assert sweep_policies.choose(front, 0.9)["spec"] == "a"  # nothing reaches the bar: the best SSIM


def test_stage_two_combines_the_front_and_ablations_are_never_chosen():
    front = [point("ld-pruning:keep=0.4/0.4", 2.4, 0.58), point("ld-pruning:keep=0.5/0.5,branch=js", 1.9, 0.64)]
    front.append(point("ld-pruning:keep=0.5/0.5,threshold=0", 1.6, 0.72))
    done = {p["spec"] for p in front}
    assert sweep_policies.refinements("ld-pruning", front, done) == [
        "ld-pruning:keep=0.4/0.4,branch=js",
        "ld-pruning:keep=0.4/0.4,threshold=0",
    ]
    assert [sweep_policies.ablation(p["spec"]) for p in front] == [False, False, True]
    assert sweep_policies.ablation("stepvar:keep=0.5/0.5,alpha=1") and not sweep_policies.ablation("stepvar:alpha=0.5")


def test_the_grid_names_budgets_by_scale_count():
    grid = sweep_policies.grid()
    assert "ld-pruning:keep=0.4/0.4/0.4" in grid["ld-pruning"] and "stepvar:keep=0.7/0.7" in grid["stepvar"]
    assert "ld-pruning:keep=0.5/0.5,threshold=0" in grid["ld-pruning"]
    assert all(len(set(g)) == len(g) for g in grid.values())


def test_table_rows_from_a_bench_report(tiny_models):
    config = BenchConfig(labels=[3], warmup=0, repeat=1, fidelity_seeds=1, weights="tiny")
    report = run_bench({"torch": Pipeline(TorchEngine(*tiny_models))}, ["full", "stepvar"], config, {})
    rows = policy_table.rows(report)
    assert set(rows) == {"full", "stepvar"} and rows["full"]["flops_ratio"] == 1.0
    assert rows["stepvar"]["flops_ratio"] < 1 and rows["stepvar"]["torch"]["speedup"] > 0
    assert 0 < rows["stepvar"]["ssim"] <= 1 and rows["full"]["ssim"] == 1.0
    text = "\n".join(policy_table.table("tiny", report, rows, {"stepvar": {}}, True))
    assert "| `stepvar` (sweep Pareto) | " in text and " - |" in text  # no ORT column values in a torch-only run
    combined = {**report, "demo": {"report": report, "rows": rows}, "var-d16": None, "sweep_points": {}}
    text = policy_table.markdown(combined)
    assert "| `stepvar` | " in text and "var-d16 size: not run in this table (`--no-d16`)." in text


def test_matched_flops_groups_policies_of_the_same_cost_and_names_the_spread():
    rows = {
        "full": {"flops_ratio": 1.0, "ssim": 1.0},
        "a": {"flops_ratio": 0.46, "ssim": 0.73},
        "b": {"flops_ratio": 0.50, "ssim": 0.70},
        "c": {"flops_ratio": 0.53, "ssim": 0.78},  # 0.07 above a, its group's first: starts its own
        "d": {"flops_ratio": 0.69, "ssim": 0.74},  # alone: no group
        "e": {"flops_ratio": 0.60},  # no fidelity: left out
    }
    groups = policy_table.matched_flops(rows, window=0.05)
    assert [g["policies"] for g in groups] == [["a", "b"]]  # greedy from the cheapest: c starts its own
    (g,) = groups
    assert (g["best"], g["worst"]) == ("a", "b") and abs(g["spread"] - 0.03) < 1e-12
    text = "\n".join(policy_table.matched_lines(groups))
    assert "| 0.460-0.500 | `a`, `b` | `a` (0.7300) | `b` (0.7000) | 0.0300 |" in text
    assert "no matched-cost" in "\n".join(policy_table.matched_lines([]))


def test_the_sweeps_measurement_runs_eval_on_a_pipeline(tiny_models):
    """The sweep's own loop, end to end on the tiny model (it had not followed evaluate's pipeline)."""
    from varrt.runtime.sampling import SamplingConfig

    rows = sweep_policies.measured(
        Pipeline(TorchEngine(*tiny_models)), ["stepvar:keep=0.5/0.5"], [3], 1, SamplingConfig(), lambda _m: None
    )
    assert set(rows) == {"full", "stepvar:keep=0.5/0.5"} and rows["full"]["ssim"] == 1.0
    assert rows["stepvar:keep=0.5/0.5"]["flops_ratio"] < 1 and 0 < rows["stepvar:keep=0.5/0.5"]["ssim"] <= 1
