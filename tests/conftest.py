"""pytest fixtures; the helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import (
    FIXTURES,
    REFERENCE,
    budget_plan_file,
    layer_set_plan_file,
    need_shared,
    tiny_source,
    tiny_var,
    tiny_vqvae,
)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return need_shared(FIXTURES)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return need_shared(REFERENCE)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Exports, hashes and engines of the test run go to a temporary cache, never ~/.cache/varrt."""
    path = tmp_path_factory.mktemp("varrt-cache")
    os.environ["VARRT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_models():
    return tiny_var(2), tiny_vqvae()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_models) -> Path:
    """The full plan of a depth-2 model exported once for the whole session (batch 1, fp32)."""
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.artifacts import ExportRequest, ensure_artifact

    out = tmp_path_factory.mktemp("exports") / "tiny-full"
    request = ExportRequest(tiny_source(), ("full",), 1, ExportConfig())
    return ensure_artifact(request, lambda: tiny_models, out=out)


@pytest.fixture(scope="session")
def plan_file(tmp_path_factory) -> Path:
    return budget_plan_file(tmp_path_factory.mktemp("plans") / "budgets.json")


@pytest.fixture(scope="session")
def layer_plan_file(tmp_path_factory) -> Path:
    return layer_set_plan_file(tmp_path_factory.mktemp("plans") / "layers.json")


@pytest.fixture(scope="session")
def policy_artifact(tmp_path_factory, tiny_models, plan_file, layer_plan_file) -> Path:
    """Every policy's graphs for batch 3 in one artifact (full, FastVAR, SkipVAR, plan files): a
    split batch runs at the bucketed group sizes 1 and 3 (a group of 2 runs padded)."""
    from varrt.export.exporter import ExportConfig
    from varrt.runtime.artifacts import ExportRequest, ensure_artifact

    out = tmp_path_factory.mktemp("exports") / "tiny-policies"
    specs = (
        "full",
        "fastvar",
        "skipvar",
        str(plan_file),
        str(layer_plan_file),  # a layer-set graph
        "ld-pruning",
        "stepvar",
        "toprovar",  # its own graph: in-graph selection after block 0
        "stagevar",
        "stagevar:skip=1,lowrank=7",  # two low-rank scales: the second restores from the first
        "skipvar+stepvar",
    )
    return ensure_artifact(ExportRequest(tiny_source(), specs, 3, ExportConfig()), lambda: tiny_models, out=out)


@pytest.fixture(scope="session")
def tiny_infinity_models():
    from helpers import tiny_bsq_vae, tiny_infinity
    from varrt.export.text_encoder import tiny_text_encoder

    return tiny_infinity(), tiny_bsq_vae(), tiny_text_encoder(32)


@pytest.fixture(scope="session")
def infinity_artifact(tmp_path_factory, tiny_infinity_models) -> Path:
    """One ORT export of the tiny Infinity for every policy (batch 2, text bucket 16): every
    Infinity parity test runs on it."""
    from helpers import TINY_SCHEDULE
    from varrt.runtime.infinity_artifacts import InfinityExportRequest, ensure_infinity_artifact

    request = InfinityExportRequest(
        source={"random_weights": {"model": "tests.helpers.tiny_infinity()"}},
        policies=INFINITY_POLICIES,
        batch=2,
        schedule=TINY_SCHEDULE,
        text_length=16,
        negative=True,
    )
    return ensure_infinity_artifact(request, lambda: tiny_infinity_models, out=tmp_path_factory.mktemp("inf") / "a")


#: SkipVAR on the 7-scale tiny schedule: decide after scale 3, decode at scale 2's grid
INFINITY_SKIPVAR = "skipvar:decision=3,grid=2"
#: every policy on the tiny Infinity (7 scales, 4 blocks), with their defaults
#: ToProVAR with a budget per block (blocks 1-3 of the tiny Infinity's 4 prune 3 different shares)
INFINITY_TOPROVAR = "toprovar:layer_score=1/1/0.5/2"
INFINITY_POLICIES = (
    "full",
    INFINITY_SKIPVAR,
    "fastvar",
    "ld-pruning",
    "stepvar",
    INFINITY_TOPROVAR,
    "stagevar",  # 8x8 low-rank in four chunks of one block, unconditional; 12x12 and 16x16 not run
    "stagevar:branch=cond",
)
