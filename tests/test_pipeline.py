"""The embedding API: one engine per pipeline, reused; policies by spec, made once; a call's images
depend on its own arguments only; one generation at a time; both families."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from helpers import TINY_SCHEDULE
from varrt.engines.torch_engine import InfinityTorchEngine, TorchEngine
from varrt.export.text_encoder import save_text_encoder
from varrt.runtime.generate import generate
from varrt.runtime.infinity_generate import generate_infinity
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.sampling import SamplingConfig
from varrt.runtime.weights import OFFICIAL_SAMPLING, Weights


def test_artifact_pipeline_reuses_its_engine_and_calls_are_independent(tiny_artifact):
    pipe = Pipeline.from_artifact(tiny_artifact)
    engine = pipe.engine
    first = pipe.generate([3], seed=1)
    other = pipe.generate([5], seed=2, sampling={"cfg": 1.5, "top_k": 0})
    again = pipe.generate([3], seed=1)
    assert pipe.engine is engine  # nothing reloaded between calls
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(pipe.generate([3], seed=1).images, first.images)
    # the same as the loop driven directly, with the official defaults (random weights, not the demo model)
    direct = generate(engine, [3], seed=1, sampling=SamplingConfig(**OFFICIAL_SAMPLING))
    assert torch.equal(direct.images, first.images)
    assert pipe.sampling_defaults == {**OFFICIAL_SAMPLING}
    assert pipe.backend == "ort" and pipe.family == "var"


def test_policies_are_made_once_per_spec_and_per_plan_content(tiny_models, tmp_path):
    pipe = Pipeline(TorchEngine(*tiny_models))
    assert pipe.policy("fastvar") is pipe.policy("fastvar")
    assert pipe.policy("fastvar") is not pipe.policy("fastvar:keep=0.5/0.5")
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"name": "a", "scales": [{} for _ in range(10)]}))
    a = pipe.policy(str(plan))
    plan.write_text(json.dumps({"name": "b", "scales": [{} for _ in range(9)] + [{"cfg": "cond"}]}))
    b = pipe.policy(str(plan))  # the file changed: a new policy, not the stale one
    assert (a.name, b.name) == ("a", "b")


class Watched:
    """A torch engine that records how many generations are inside it at once."""

    def __init__(self, engine: TorchEngine) -> None:
        self.inner, self.active, self.most = engine, 0, 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, graph, feeds):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.001)  # let another thread in, if the pipeline would let it
            return self.inner.run(graph, feeds)
        finally:
            with self.lock:
                self.active -= 1


def test_concurrent_callers_are_served_one_at_a_time_with_their_own_results(tiny_models):
    watched = Watched(TorchEngine(*tiny_models))
    pipe = Pipeline(watched)
    serial = {seed: pipe.generate([seed], seed=seed, policy="ld-pruning").images for seed in range(4)}
    results: dict[int, torch.Tensor] = {}

    def call(seed: int) -> None:
        results[seed] = pipe.generate([seed], seed=seed, policy="ld-pruning").images

    threads = [threading.Thread(target=call, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(torch.equal(results[s], serial[s]) for s in range(4))
    assert watched.most == 1


def test_infinity_pipeline_on_torch_and_from_its_artifact(tiny_infinity_models, infinity_artifact, tmp_path):
    model, vae, te = tiny_infinity_models
    prompts = ["a red cat on the sky", "a small house by the sea"]
    pipe = Pipeline(InfinityTorchEngine(model, vae, te), tokenizer=te, schedule=TINY_SCHEDULE, text_length=16)
    assert pipe.family == "infinity" and pipe.num_scales == TINY_SCHEDULE.num_scales
    kw = {"seed": 2, "negative_prompt": "dark"}
    got = pipe.generate(prompts=prompts, policy="fastvar", **kw)
    direct = generate_infinity(
        pipe.engine, te, prompts, schedule=TINY_SCHEDULE, text_length=16, policy=pipe.policy("fastvar"),
        sampling=pipe.sampling(), **kw,
    )  # fmt: skip
    assert torch.equal(got.images, direct.images) and got.plans == direct.plans
    save_text_encoder(te, tmp_path / "t5")
    ort = Pipeline.from_artifact(infinity_artifact, text_encoder=tmp_path / "t5")
    assert ort.schedule == TINY_SCHEDULE and ort.text_length == 16
    torch.testing.assert_close(
        ort.generate(prompts=prompts, policy="fastvar", **kw).images, got.images, atol=1e-4, rtol=0
    )
    with pytest.raises(ValueError, match="text-to-image: give prompts"):
        ort.generate([1, 2])
    with pytest.raises(ValueError, match="do not apply"):
        ort.generate(prompts=prompts, sampling={"more_smooth": True})


def test_bad_calls_are_one_line_value_errors(tiny_models):
    pipe = Pipeline(TorchEngine(*tiny_models))
    with pytest.raises(ValueError, match="class-conditional"):
        pipe.generate(prompts=["a cat"])
    with pytest.raises(ValueError, match="seed must be an integer"):
        pipe.generate([1], seed=-1)
    with pytest.raises(ValueError, match="do not apply"):
        pipe.generate([1], sampling={"tau": 0.5})


def test_weights_of_an_artifact_know_their_sampling_defaults():
    demo = Weights.demo_model()
    source = {"var": {"path": "/moved/var.safetensors", "sha256": demo.source()["var"]["sha256"]}, "vae": {}}
    found = Weights.of_source(source)
    assert found.demo and found.sampling_defaults == demo.sampling_defaults != OFFICIAL_SAMPLING
    assert Weights.of_source({"random_weights": {"model": "var-d16", "seed": 0}}).label == "random (var-d16)"
    gone = {"var": {"path": "/nowhere/var.pth", "sha256": "0" * 64}, "vae": {"path": "/nowhere/vae.pth"}}
    assert Weights.of_source(gone) is None
