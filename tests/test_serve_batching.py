"""Per-sample generators and the service both servers share: a request's image depends on its own
inputs only (alone, in any batch, at any position, padded to any bucket), requests are checked
before any work, grouped by plan and padded to the exported buckets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TINY_SCHEDULE
from varrt.engines.torch_engine import InfinityTorchEngine, TorchEngine
from varrt.export.exporter import ExportConfig
from varrt.runtime.artifacts import ExportRequest
from varrt.runtime.generate import generate
from varrt.runtime.images import to_uint8
from varrt.runtime.pipeline import Pipeline
from varrt.runtime.plan import bucket_of, group_sizes
from varrt.runtime.serve.batching import GenerationRequest, ImageService, RequestError, Served

LABELS, SEEDS = [3, 5, 7, 1], [11, 12, 13, 14]


def tokens_of(result, row: int) -> list:
    return [None if idx is None else idx[row] for idx in result.indices]


def same_tokens(a, row_a: int, b, row_b: int) -> bool:
    return all(
        (x is None and y is None) or torch.equal(x, y)
        for x, y in zip(tokens_of(a, row_a), tokens_of(b, row_b), strict=True)
    )


@pytest.mark.parametrize("policy", ["full", "skipvar", "ld-pruning", "stagevar"])
def test_per_sample_seeds_make_each_sample_independent_of_its_batch(tiny_models, policy):
    pipe = Pipeline(TorchEngine(*tiny_models))
    batch = pipe.generate(LABELS, seed=SEEDS, policy=policy)
    flipped = pipe.generate(LABELS[::-1], seed=SEEDS[::-1], policy=policy)
    for i, (label, seed) in enumerate(zip(LABELS, SEEDS)):
        alone = pipe.generate([label], seed=[seed], policy=policy)
        assert same_tokens(batch, i, alone, 0), f"{policy}: sample {i} drew other tokens inside the batch"
        assert same_tokens(flipped, len(LABELS) - 1 - i, alone, 0), f"{policy}: sample {i} depends on its position"
        # the decoder's float rounding may differ by batch size; the pixels stay within one level
        diff = np.abs(to_uint8(batch.images[i : i + 1]).astype(int) - to_uint8(alone.images).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_one_seed_per_sample_for_a_batch_of_one_is_the_official_stream(tiny_models):
    engine = TorchEngine(*tiny_models)
    official = generate(engine, [4], seed=9)
    per_sample = generate(engine, [4], seed=[9])
    assert torch.equal(official.images, per_sample.images)
    # one shared generator: two identical samples draw different tokens (the batch is one stream);
    # per-sample generators with the same seed draw the same ones
    shared = generate(engine, [4, 4], seed=9)
    twins = generate(engine, [4, 4], seed=[9, 9])
    assert not same_tokens(shared, 0, shared, 1)
    assert same_tokens(twins, 0, twins, 1) and same_tokens(twins, 0, official, 0)
    with pytest.raises(ValueError, match="2 seeds for 3 samples"):
        generate(engine, [1, 2, 3], seed=[1, 2])


def test_per_sample_seeds_on_onnx_runtime_give_the_same_pixels(policy_artifact):
    """A batch of 3 on the exported graphs vs each request padded with copies of itself."""
    pipe = Pipeline.from_artifact(policy_artifact)
    rows = [(3, 21), (8, 22), (5, 23)]
    for policy in ("full", "fastvar", "skipvar"):
        batch = pipe.generate([c for c, _ in rows], seed=[s for _, s in rows], policy=policy)
        for i, (label, seed) in enumerate(rows):
            alone = pipe.generate([label] * 3, seed=[seed] * 3, policy=policy)
            assert same_tokens(batch, i, alone, 0)
            assert np.array_equal(to_uint8(batch.images[i : i + 1]), to_uint8(alone.images[:1])), policy


def test_a_request_rows_do_not_see_the_other_rows_on_onnx_runtime(policy_artifact):
    """Row 1 (odd: where a knife-edge draw was once taken for mixing, see docs/serving.md) holds the
    same request next to other requests: its logits stay within float rounding at every scale (rows
    that mixed would move them by order 1), and its tokens are the same."""
    from varrt.runtime.knife_edge import LogitRecorder

    pipe = Pipeline.from_artifact(policy_artifact)
    recorder = pipe.engine = LogitRecorder(pipe.engine)
    runs = []
    for labels, seeds in (([3, 8, 5], [21, 22, 23]), ([9, 8, 0], [31, 22, 33])):
        generation = pipe.generate(labels, seed=seeds)
        runs.append((generation, recorder.take()))
    (first, first_logits), (second, second_logits) = runs
    assert same_tokens(first, 1, second, 1)
    b = 3
    for x, y in zip(first_logits, second_logits, strict=True):
        rows = [1, b + 1]  # the request's conditional and unconditional rows
        assert (x[rows] - y[rows]).abs().max() < 1e-4
        assert (x[0] - y[0]).abs().max() > 1e-2  # its neighbours did change


def test_infinity_per_prompt_seeds(tiny_infinity_models):
    model, vae, te = tiny_infinity_models
    pipe = Pipeline(InfinityTorchEngine(model, vae, te), tokenizer=te, schedule=TINY_SCHEDULE, text_length=16)
    prompts = ["a red cat", "a small house on the sea", "a dog"]
    batch = pipe.generate(prompts=prompts, seed=[1, 2, 3])
    for i, p in enumerate(prompts):
        alone = pipe.generate(prompts=[p], seed=[i + 1])
        assert all(torch.equal(b[i], a[0]) for b, a in zip(batch.bits, alone.bits) if b is not None)


def test_buckets_and_the_export_key():
    assert group_sizes(1) == (1,) and group_sizes(4) == (1, 2, 4) and group_sizes(6) == (1, 3, 6)
    assert [bucket_of(n, (1, 2, 4)) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    with pytest.raises(ValueError, match="no bucket holds a batch of 5"):
        bucket_of(5, (1, 2, 4))
    plain = ExportRequest({"random_weights": {"model": "x"}}, ("full",), 4, ExportConfig())
    bucketed = ExportRequest({"random_weights": {"model": "x"}}, ("full",), 4, ExportConfig(), buckets=True)
    assert "buckets" not in plain.identity()  # single-batch export keys are what they were
    assert bucketed.identity()["buckets"] == [1, 2, 4] and bucketed.key() != plain.key()


# ------------------------------------------------------------------------------------------ service
@pytest.fixture(scope="module")
def torch_service(tiny_models) -> ImageService:
    return ImageService(Pipeline(TorchEngine(*tiny_models)), ("full", "fastvar", "skipvar:threshold=0.86"), 4)


def test_service_groups_by_plan_pads_to_buckets_and_answers_each_request(torch_service):
    svc = torch_service
    assert svc.buckets == (1, 2, 4)
    reqs = [
        GenerationRequest(class_id=1, seed=1),
        GenerationRequest(class_id=2, seed=2, policy="fastvar"),
        GenerationRequest(class_id=3, seed=3),
        GenerationRequest(class_id=5000, seed=3),  # unknown class
        GenerationRequest(class_id=4, seed=4, cfg=4.0),  # the default cfg: same group as the first ones
        GenerationRequest(class_id=5, seed=5, cfg=1.5),  # other sampling: its own group
        GenerationRequest(class_id=6, seed=6, policy="skipvar:threshold=0.86"),
    ]
    before = svc.stats.to_dict()
    answers = svc.serve(reqs)
    assert isinstance(answers[3], RequestError) and "unknown class id(s) [5000]" in str(answers[3])
    served = {i: a for i, a in enumerate(answers) if isinstance(a, Served)}
    assert sorted(served) == [0, 1, 2, 4, 5, 6]
    assert [(served[i].batch, served[i].bucket) for i in (0, 2, 4)] == [(3, 4)] * 3  # 3 requests padded to 4
    assert (served[1].batch, served[5].batch, served[6].batch) == (1, 1, 1)
    for i in (0, 2, 5, 6):
        alone = svc.serve([reqs[i]])[0]
        assert alone.bucket == 1
        assert np.abs(alone.image.astype(int) - served[i].image.astype(int)).max() <= 1
    after = svc.stats.to_dict()
    assert after["rejected"] - before["rejected"] == 1 and after["served"] - before["served"] == 6 + 4


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerationRequest(class_id=1, policy="nope"), "unknown policy 'nope': this server serves full, fastvar"),
        (GenerationRequest(class_id=1, top_p=0.0), "top_p must be in (0, 1]"),
        (GenerationRequest(class_id=1, seed=-1), "seed must be an integer >= 0"),
        (GenerationRequest(prompt="a cat"), "class-conditional: send a class_id"),
        (GenerationRequest(class_id=1, tau=0.5), "sampling settings ['tau'] do not apply"),
    ],
)
def test_service_refuses_bad_requests_with_one_line(torch_service, request_, message):
    with pytest.raises(RequestError) as e:
        torch_service.check(request_)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_service_buckets_come_from_the_exported_graphs(policy_artifact, tiny_artifact):
    # batch 3, no batch-1 graphs: ONNX Runtime's symbolic sessions run bucket 1 too (OrtEngine.has_graph)
    assert ImageService(Pipeline.from_artifact(policy_artifact)).buckets == (1, 3)
    assert ImageService(Pipeline.from_artifact(tiny_artifact)).buckets == (1,)
