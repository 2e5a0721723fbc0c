"""tools/gpu_check.sh dry run: the one-shot GPU check, run on the CPU with the eager engine standing
in for torch-graph (the script's sections, its report and the runtime's buffer reuse; no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO


def test_gpu_check_dry_run_writes_its_report(tmp_path):
    out = tmp_path / "gpu-check"
    # the CPU is shared: the dry run gets more than the GPU run's 420 s, and every section its turn
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_TIMEOUT_S": "1500"}
    args = ["--dry-run", "--precisions", "float32,bfloat16", "--batches", "1", "--timing-precisions", "float32"]
    args += ["--timing-batches", "1", "--warmup", "0", "--repeat", "1", "--generations", "2", "--budget-s", "1400"]
    args += ["--infinity-policies", "fastvar"]
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu_check.sh"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((out / "results.json").read_text())
    assert r["dry_run"] and r["device"] == "cpu" and r["skipped"] == []
    cases = {(c["precision"], c["batch"], c["cfg"]) for c in r["parity"]}
    assert cases == {(p, 1, c) for p in ("float32", "bfloat16") for c in ("on", "off-late")}
    assert all(c[run]["identical"] for c in r["parity"] for run in ("first", "replay"))
    cap = r["captures"]
    assert cap["plans"] == ["cfg-off-late", "full"] and not cap["pile_up"]
    assert [a["kv_buffers"] for a in cap["after_each"]] == [3, 3]  # the batch's buffer, then one per group
    (timing,) = r["timings"][:1]
    assert len(timing["torch"]["scales_ms"]) == len(timing["torch-graph"]["scales_ms"]) == 4
    assert timing["torch"]["total_ms"]["n"] == 1 and timing["speedup_total"] > 0
    assert "TensorRT is not importable" in r["tensorrt"]["skipped"] or "error" not in r["tensorrt"]
    # Infinity: the tiny model, every policy asked for, with and without a negative prompt
    cases = {(c["precision"], c["policy"], c["negative_prompt"]) for c in r["infinity_parity"]}
    assert cases == {("bfloat16", "fastvar", n) for n in (False, True)}
    assert all(c[run]["identical"] and not c["pile_up"] for c in r["infinity_parity"] for run in ("first", "replay"))
    (inf,) = r["infinity_timings"]
    assert len(inf["torch"]["scales_ms"]) == len(inf["torch-graph"]["scales_ms"]) == 7
    assert inf["torch"]["total_ms"]["n"] == 1 and inf["speedup_total"] > 0
    assert inf["torch-graph memory"]["buffers_bytes"] > 0  # the KV came from the engine's persistent buffers
    text = (out / "summary.md").read_text()
    assert "DRY RUN on the CPU" in text and "random weights" in text and "| float32 | 1 | off-late |" in text
    assert "## Infinity (tiny" in text and "| bfloat16 | fastvar | yes | identical | identical | False |" in text
