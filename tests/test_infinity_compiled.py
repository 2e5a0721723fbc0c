"""Infinity on the compiled paths: torch-graph's static buffers and capture keys for every exported
graph (CPU), `varrt compare` on an Infinity artifact, prompt-like random feeds; torch-graph on a
GPU against eager torch on the same GPU (skipped without one)."""

from __future__ import annotations

import copy
from argparse import Namespace

import pytest
import torch
from conftest import INFINITY_POLICIES

from helpers import TINY_SCHEDULE
from varrt.engines.compare import SAFE_VOCAB, T5_EOS, T5_PAD, random_feeds
from varrt.engines.torch_engine import InfinityTorchEngine
from varrt.engines.torch_graph_engine import EAGER_COMPONENTS, StaticGraph
from varrt.export.artifact import read_manifest
from varrt.export.text_encoder import save_text_encoder

PROMPTS = ["a red cat on the sky", "a small house by the sea"]


# ------------------------------------------------------------------------------------------ torch-graph, CPU side
def test_every_infinity_graph_gets_static_buffers_and_reads_the_kv_in_place(tiny_infinity_models, infinity_artifact):
    """For every static graph of every policy: one buffer per input with the spec's shape and dtype,
    except the KV cache; a call computes what eager torch computes from those buffers (inputs are
    copied at load time), reads the KV cache where the runtime keeps it (at call time), and the
    capture key names that address."""
    eager = InfinityTorchEngine(*tiny_infinity_models)
    manifest = read_manifest(infinity_artifact)
    components = set()
    for graph in manifest.graphs:
        if graph.component in EAGER_COMPONENTS:
            continue
        components.add(graph.component)
        static = StaticGraph(eager.module(graph), graph, torch.device("cpu"))
        want = {t.name: (tuple(t.shape), t.torch_dtype) for t in graph.inputs if t.name != "kv"}
        assert {n: (tuple(b.shape), b.dtype) for n, b in static.inputs.items()} == want, graph.name
        feeds = random_feeds(graph, TINY_SCHEDULE.total_tokens, 0, seed=1)
        addresses = {n: b.data_ptr() for n, b in static.inputs.items()}
        static.load(feeds)
        ref = eager.run(graph, feeds)
        first = next(n for n in static.inputs if feeds[n].is_floating_point())
        feeds[first].add_(1.0)  # after load: the graph must not see it
        got = static.call(feeds)
        assert {n: b.data_ptr() for n, b in static.inputs.items()} == addresses
        assert set(got) == {t.name for t in graph.outputs}
        for name, t in ref.items():
            assert torch.equal(got[name], t), f"{graph.name}: {name}"
        if "kv" in feeds:
            other = feeds["kv"].clone()
            assert static.key(feeds) != static.key({**feeds, "kv": other}) and static.key(feeds)[0] == graph.name
            feeds["kv"].mul_(2.0)  # read at call time, where the runtime keeps it
            again = static.call(feeds)
            assert not torch.equal(again["logits"], got["logits"]), graph.name
    assert components == set(manifest.components) - set(EAGER_COMPONENTS)


def test_infinity_torch_graph_without_a_gpu_is_one_line(tiny_infinity_models):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the engine starts")
    from varrt.engines.base import BackendUnavailable
    from varrt.engines.torch_graph_engine import InfinityTorchGraphEngine

    with pytest.raises(BackendUnavailable, match="torch-graph needs a CUDA GPU"):
        InfinityTorchGraphEngine(*tiny_infinity_models)


# ------------------------------------------------------------------------------------------ random feeds
def test_random_text_feeds_look_like_prompts(infinity_artifact):
    """Token ids of the vocabulary, EOS at each row's length, padding after; every text mask and
    bias covers the same prefix (T5 would fail on ids outside its vocabulary)."""
    graphs = {g.component: g for g in read_manifest(infinity_artifact).graphs}
    f = random_feeds(graphs["text_encoder"], 0, 0, seed=3, vocab=40)
    ids, mask = f["input_ids"], f["attention_mask"]
    lengths = mask.sum(1)
    assert mask.dtype == ids.dtype == torch.int64 and (lengths >= 1).all() and len(set(lengths.tolist())) > 1
    for row, n in zip(ids, lengths.tolist()):
        assert (row[: n - 1] >= 2).all() and (row[: n - 1] < 40).all() and row[n - 1] == T5_EOS
        assert (row[n:] == T5_PAD).all()
    assert (random_feeds(graphs["text_encoder"], 0, 0, seed=3)["input_ids"] < SAFE_VOCAB).all()
    cond = random_feeds(graphs["infinity_conditioner"], 0, 0, seed=3)
    assert set(cond["uncond"].unique().tolist()) <= {0.0, 1.0}
    prefix = cond["text_mask"].cumprod(1)
    assert torch.equal(prefix, cond["text_mask"]) and (cond["text_mask"][:, 0] == 1).all()
    step = random_feeds(graphs["infinity_transformer"], TINY_SCHEDULE.total_tokens, 0, seed=3)
    live = step["text_bias"] == 0
    assert torch.equal(live, live.cumprod(1).bool()) and live[:, 0].all()
    assert (step["text_bias"][~live] == -torch.inf).all()


# ------------------------------------------------------------------------------------------ varrt compare
@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, tiny_infinity_models):
    """The tiny models the Infinity artifact was exported from, as the files a user has."""
    model, vae, te = tiny_infinity_models
    d = tmp_path_factory.mktemp("inf-files")
    torch.save(model.state_dict(), d / "infinity.pth")
    torch.save({"vae": vae.state_dict()}, d / "vae.pth")
    save_text_encoder(te, d / "t5")
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(other.state_dict(), d / "other.pth")
    return d


def test_compare_on_an_infinity_artifact(infinity_artifact, weight_files, capsys):
    """`varrt compare` on every graph of every policy of the tiny Infinity artifact: the torch
    reference against ONNX Runtime with polygraphy, at VAR's tolerances; other weights fail."""
    from varrt.runtime.cli import main

    files = ["--vae", str(weight_files / "vae.pth"), "--text-encoder", str(weight_files / "t5")]
    argv = ["compare", str(infinity_artifact), "--backends", "torch,ort", *files]
    assert main([*argv, "--checkpoint", str(weight_files / "infinity.pth")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # results on stdout; rich wraps a long title
    assert "all pass" in out, out[-3000:]
    assert "FAIL" not in out.replace("FAILURES", "")
    fastvar = next(g.name for g in read_manifest(infinity_artifact).graphs if "fastvar" in g.name)
    graphs = f"text_encoder_r2_l16,infinity_conditioner_r4_l16,{fastvar}"
    assert main([*argv, "--checkpoint", str(weight_files / "other.pth"), "--graphs", graphs]) == 1  # a failure
    out = capsys.readouterr().out
    assert "FAILURES" in " ".join(out.split()) and "text_encoder_r2_l16" in out
    rows = [line for line in out.splitlines() if "torch vs ort" in line]
    assert len(rows) == 3 and sum("pass" in r for r in rows) == 1  # T5 is the same; the transformer is not


def test_compare_finds_the_weights_an_artifact_came_from(tmp_path):
    """Without weight arguments the torch reference runs the weights in the manifest's ``source``
    (random weights of a released size, or files still on disk) with the exported T5 folder, or
    ``--text-encoder``; named weights are read as the artifact's family."""
    from varrt.runtime.cli.inspect import reference_weights

    blank = dict(checkpoint=None, vae=None, random_weights=False, text_encoder=None, model=None, weights_seed=0)
    blank.update(prompt=None)
    te, other = tmp_path / "t5", tmp_path / "t5-other"
    te.mkdir(), other.mkdir()
    w = reference_weights(
        Namespace(**blank),
        "infinity",
        {"random_weights": {"model": "infinity-2b", "seed": 3}, "text_encoder": {"path": str(te)}},
    )
    assert (w.family, w.random, w.seed, w.text_encoder) == ("infinity", "infinity-2b", 3, te)
    (tmp_path / "a.pth").write_bytes(b"x")
    (tmp_path / "v.pth").write_bytes(b"x")
    files = {k: {"path": str(tmp_path / f)} for k, f in (("infinity", "a.pth"), ("vae", "v.pth"))}
    w = reference_weights(
        Namespace(**{**blank, "text_encoder": other}), "infinity", {**files, "text_encoder": {"path": str(te)}}
    )
    assert (w.checkpoint, w.vae, w.text_encoder) == (tmp_path / "a.pth", tmp_path / "v.pth", other)
    gone = {**files, "vae": {"path": str(tmp_path / "gone.pth")}}
    assert reference_weights(Namespace(**blank), "infinity", gone) is None
    named = Namespace(**{**blank, "checkpoint": tmp_path / "a.pth", "vae": tmp_path / "v.pth"})
    w = reference_weights(named, "infinity", {**gone, "text_encoder": {"path": str(te)}})
    assert (w.family, w.checkpoint, w.text_encoder) == ("infinity", tmp_path / "a.pth", te)


def test_compare_without_the_weights_is_one_line(infinity_artifact, capsys):
    """The tiny artifact's source is no released size and no file: the torch reference cannot be
    built, and `varrt compare` says so in one line instead of a traceback."""
    from varrt.runtime.cli import main

    assert main(["compare", str(infinity_artifact), "--backends", "torch,ort"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------ GPU only
def _gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; none is visible to torch")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("spec", INFINITY_POLICIES)
def test_infinity_torch_graph_draws_eager_torch_bits_and_replays(precision, spec, tiny_infinity_models):
    """torch-graph runs the eager modules' kernels on the same GPU and generator: the same bits at
    every scale for every policy, with and without a negative prompt, first call (capture) and
    replay; the second generation captures nothing new."""
    _gpu()
    from varrt.engines.torch_graph_engine import InfinityTorchGraphEngine
    from varrt.export.infinity_exporter import precision_model
    from varrt.runtime.infinity_generate import generate_infinity
    from varrt.runtime.policies.infinity import make_infinity_policy

    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model, vae, te = copy.deepcopy(tiny_infinity_models)
        model = precision_model(model, precision)
        ref = InfinityTorchEngine(copy.deepcopy(model).cuda(), copy.deepcopy(vae).cuda(), copy.deepcopy(te))
        ref.text_encoder.model.cuda()
        engine = InfinityTorchGraphEngine(model, vae, te)
        policy = make_infinity_policy(spec, TINY_SCHEDULE, model.cfg.depth)
        for neg in (None, "dark night"):
            kw = dict(schedule=TINY_SCHEDULE, text_length=16, seed=0, policy=policy, negative_prompt=neg)
            want = generate_infinity(ref, te, PROMPTS, **kw)
            captured = None
            for run in range(2):
                got = generate_infinity(engine, te, PROMPTS, **kw)
                assert got.plans == want.plans and got.decisions == want.decisions
                for si, (a, b) in enumerate(zip(want.bits, got.bits)):
                    assert (a is None and b is None) or torch.equal(a, b), f"{spec} {precision} {neg} run {run} {si}"
                stats = engine.graphs.stats()
                assert not stats["not_capturable"], stats
                if run == 1:
                    assert stats["captured"] == captured  # replayed, nothing new
                captured = stats["captured"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
