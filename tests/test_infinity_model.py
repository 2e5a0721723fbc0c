"""Infinity's models: official state-dict listings, strict loading, and the step loop's parity."""

from __future__ import annotations

import math

import onnx
import pytest
import torch
from test_state_dict_listings import listing_of, read_listing

from helpers import TINY_SCHEDULE, tiny_bsq_vae, tiny_infinity
from varrt.engines.compare import random_feeds, slot_order_free
from varrt.export.bsq_vae import BSQVAE
from varrt.export.checkpoint import CheckpointError
from varrt.export.graphs import GraphSpec, TensorSpec
from varrt.export.infinity import Infinity, TextConditioning, scale_positions, text_bias
from varrt.export.infinity_checkpoint import load_bsq_vae, load_infinity, official_cfg_uncond
from varrt.export.infinity_config import BSQ_VAE_CONFIGS, INFINITY_CONFIGS, InfinitySchedule
from varrt.export.infinity_graphs import InfinityFastVarShape, TextStepShape, infinity_step_spec
from varrt.export.onnx_export import specialize
from varrt.export.var import Past, gather_tokens, pivotal_tokens


@pytest.mark.parametrize(
    "name,listing,params",
    [
        ("infinity-2b", "infinity_state_dict_2b.txt", 2_204_564_032),
        ("infinity-8b", "infinity_state_dict_8b.txt", 8_375_791_824),
    ],
)
def test_infinity_state_dict_matches_official_listing(name, listing, params, reference_dir):
    with torch.device("meta"):
        model = Infinity(INFINITY_CONFIGS[name])
        for chunk in model.block_chunks:  # the official bf16=1 build casts the blocks before loading
            chunk.bfloat16()
    assert listing_of(model) == read_listing(reference_dir / listing)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize(
    "name,listing,params",
    [("infinity_vae_d32", "infinity_vae_d32_state_dict.txt", 65_092_355),
     ("infinity_vae_d56", "infinity_vae_d56_state_dict.txt", 48_484_611)],
)  # fmt: skip
def test_bsq_decoder_matches_official_listing(name, listing, params, reference_dir):
    with torch.device("meta"):
        model = BSQVAE(BSQ_VAE_CONFIGS[name])
    official = [row for row in read_listing(reference_dir / listing) if row[0].startswith("decoder.")]
    assert listing_of(model) == official
    assert sum(p.numel() for p in model.parameters()) == params


def test_schedules_and_rope_positions():
    s = InfinitySchedule.for_ratio(1.0, "1M")
    assert [h for h, _ in s.grids] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    assert s.total_tokens == 10521
    assert sorted({r for r, _ in s.positions(3)}) == [0, 11, 21, 32, 43, 53]
    assert sorted({r for r, _ in s.positions(5)}) == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59]
    assert InfinitySchedule.for_ratio(1.0, "0.25M").total_tokens == 2521
    tall = InfinitySchedule.for_ratio(1.45, "1M")  # nearest template 1.5; 4 * 1.625 = 6.5 rounds to 6
    assert tall.ratio == 1.5 and tall.last == (78, 52)
    assert sorted({r for r, _ in tall.positions(3)}) == [0, 13, 26, 39, 52, 65]
    wide = InfinitySchedule.for_ratio(0.5)
    assert wide.last == (45, 90)
    assert [r for r, _ in InfinitySchedule.for_ratio(1.5).positions(2)][::2] == [0, 26, 52]


def _text(model, b=2, lt=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, lt, model.cfg.text_channels, generator=g)
    mask = torch.ones(b, lt)
    mask[1, 4:] = 0  # the second prompt is shorter
    return text, mask


@pytest.mark.parametrize("patchify", [False, True])
def test_step_loop_equals_masked_forward(patchify):
    model = tiny_infinity(patchify=patchify)
    sched = TINY_SCHEDULE
    text, mask = _text(model)
    b, L = 2, sched.total_tokens
    x = torch.randn(b, L - 1, model.cfg.d_vae, generator=torch.Generator().manual_seed(3))
    ref = model(text, mask, x, sched)
    cond = model.condition(text, mask, torch.zeros(b))
    kv, kv_bias = model.empty_kv(b, L)
    x_all = torch.cat((x.new_zeros(b, 1, x.shape[-1]), x), dim=1)
    outs = []
    for si in range(sched.num_scales):
        a, e = sched.begin_ends[si]
        pos = scale_positions(sched, si).expand(b, -1, -1)
        logits, new_kv, _ = model.step(x_all[:, a:e], pos, cond, torch.where(mask > 0, 0.0, -torch.inf), kv, kv_bias)
        kv[:, :, :, :, a:e] = new_kv
        kv_bias[a:e] = 0
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-5)


def test_padding_and_uncond_rows():
    """Padded text tokens change nothing; an uncond row reads cfg_uncond[:Lt] under its prompt's mask."""
    model = tiny_infinity()
    text, mask = _text(model)
    c1 = model.condition(text, mask, torch.zeros(2))
    padded = torch.cat((text, torch.randn(2, 3, text.shape[-1])), 1)
    c2 = model.condition(padded, torch.cat((mask, torch.zeros(2, 3)), 1), torch.zeros(2))
    torch.testing.assert_close(c1.sos, c2.sos)
    torch.testing.assert_close(c1.ada, c2.ada)
    u = model.condition(text, mask, torch.ones(2))
    learned = model.cfg_uncond[:6].expand(2, -1, -1)
    ref = model.condition(learned.clone(), mask, torch.zeros(2))
    torch.testing.assert_close(u.sos, ref.sos)
    assert not torch.allclose(u.sos, c1.sos)
    assert isinstance(u, TextConditioning)


def test_strict_load_round_trip_and_tolerances(tmp_path):
    model = tiny_infinity()
    sd = model.state_dict()
    path = tmp_path / "infinity.pth"
    torch.save(sd, path)
    loaded = load_infinity(path)
    assert loaded.cfg == model.cfg
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # what the official loader tolerates on purpose: legacy buffers, absent zero_k_bias, short cfg_uncond
    odd = {k: v for k, v in sd.items() if not k.endswith("zero_k_bias")}
    odd["attn_bias_for_masking"] = torch.zeros(3, 3)
    odd["cfg_uncond"] = sd["cfg_uncond"][:10]
    loaded = load_infinity(odd, config=model.cfg)
    cu = loaded.cfg_uncond
    assert torch.equal(cu[:10], sd["cfg_uncond"][:10])
    assert torch.equal(cu[10:], official_cfg_uncond(16, model.cfg.text_channels)[10:])
    # blocks in bf16 (the official build), the rest in fp32
    half = load_infinity(path, dtype=torch.bfloat16)
    assert half.mat_dtype == torch.bfloat16 and half.head.weight.dtype == torch.float32


def test_strict_load_errors(tmp_path):
    sd = tiny_infinity().state_dict()
    bad = dict(sd)
    del bad["block_chunks.1.module.0.ffn.fc1.weight"]
    with pytest.raises(CheckpointError, match="missing keys.*ffn.fc1.weight"):
        load_infinity(bad)
    bad = {**sd, "head.weight": torch.zeros(3, 64)}
    with pytest.raises(CheckpointError, match="shape mismatches.*head.weight"):
        load_infinity(bad)
    with pytest.raises(CheckpointError, match="VAE checkpoint"):
        load_infinity({"decoder.conv_in.conv.weight": torch.zeros(1)})
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_infinity(broken)


def test_sharded_directory(tmp_path):
    import json

    from safetensors.torch import save_file

    sd = tiny_infinity().state_dict()
    keys = list(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(tmp_path / name))
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_infinity(tmp_path)
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_infinity(tmp_path)


def test_vae_loading_both_namings(tmp_path):
    vae = tiny_bsq_vae()
    sd = vae.state_dict()
    path = tmp_path / "vae.pth"
    torch.save({"vae": {**sd, "encoder.conv_in.conv.weight": torch.zeros(1), "quantize.lfq.mask": torch.ones(8)}}, path)
    z = torch.randn(1, 8, 8, 8)
    assert torch.equal(load_bsq_vae(path).decode(z), vae.decode(z))
    plain = {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias").replace(".norm.", "."): v
             for k, v in sd.items()}  # fmt: skip
    assert "decoder.up.1.upsample.conv.weight" in plain
    torch.save({"vae": plain}, path)
    assert torch.equal(load_bsq_vae(path).decode(z), vae.decode(z))
    torch.save({"vae": {**sd, "backbone.x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="keys no BSQ VAE has"):
        load_bsq_vae(path)
    img = vae.decode(z)
    assert img.shape == (1, 3, 32, 32) and img.min() >= 0 and img.max() <= 1


# ------------------------------------------------------------------ step variants: probe, layers, FastVAR
def _scale_inputs(model, si=4, b=2, spread=True):
    """Conditioning, text bias and a cache holding scales 0..si-1 (run densely), then scale si's
    random inputs: what a graph of scale si is fed. ``spread`` scales the tokens by 1..n, so that
    FastVAR's ranks are far from ties; without it, the pivotal tokens change from sub-block to
    sub-block (a test can tell whether each one picks its own)."""
    sched = TINY_SCHEDULE
    text, mask = _text(model, b)
    cond = model.condition(text, mask, torch.zeros(b))
    tbias = text_bias(mask)
    g = torch.Generator().manual_seed(5)
    kv, kv_bias = model.empty_kv(b, sched.total_tokens)
    for s in range(si):
        a, e = sched.begin_ends[s]
        pos = scale_positions(sched, s).expand(b, -1, -1)
        x = torch.randn(b, e - a, model.cfg.d_vae, generator=g)
        _, new_kv, _ = model.step(x, pos, cond, tbias, kv, kv_bias)
        kv[:, :, :, :, a:e] = new_kv
        kv_bias[a:e] = 0
    n = sched.tokens(si)
    x = torch.randn(b, n, model.cfg.d_vae, generator=g)
    if spread:
        x = x * (1 + torch.randperm(n, generator=g)).view(1, n, 1)
    return x, scale_positions(sched, si).expand(b, -1, -1), cond, tbias, kv, kv_bias


def test_shapes_names_and_specs():
    cfg = tiny_infinity().cfg
    plain = TextStepShape(4, 64, 64, 521, past=100, text=16)
    assert plain.component == "infinity_transformer" and plain.name == "infinity_transformer_r4_n64_m64_p100_t521_l16"
    probe = TextStepShape(4, 64, 64, 521, past=100, text=16, probe=True)
    assert probe.name == "infinity_transformer_probe_r4_n64_m64_p100_t521_l16"
    spec = infinity_step_spec(cfg, probe)
    assert spec.outputs[-1] == TensorSpec("entropy", (4, 4, 64), "float32") and spec.blocks is None
    layers = infinity_step_spec(cfg, TextStepShape(4, 64, 64, 521, past=100, text=16, layers=(0, 2)))
    assert layers.component == "infinity_transformer_layers" and layers.blocks == (0, 2)
    assert [t.name for t in layers.outputs] == ["logits", "new_kv", "hidden"]
    with pytest.raises(ValueError, match="a step graph is one of: plain, probe, layer set"):
        TextStepShape(4, 64, 64, 521, past=100, text=16, probe=True, layers=(0,))
    fast = InfinityFastVarShape(4, 64, 32, 521, (1, 3), past=100, text=16)
    assert fast.name == "infinity_transformer_fastvar_b1-3_r4_n64_k32_p100_t521_l16"
    spec = infinity_step_spec(cfg, fast)
    assert spec.component == "infinity_transformer_fastvar" and spec.blocks == (1, 3)
    assert spec.input("kv_bias").shape == (4, 100) and spec.input("keep_rank").shape == (32,)
    assert spec.input("deltas").shape == (4, 4, 3, 64, 64) == spec.outputs[2].shape
    assert GraphSpec.from_dict(spec.to_dict()) == spec


def test_probe_step_returns_the_self_attention_entropy():
    model = tiny_infinity()
    x, pos, cond, tbias, kv, kv_bias = _scale_inputs(model)
    logits, new_kv, hidden = model.step(x, pos, cond, tbias, kv, kv_bias)
    p_logits, p_kv, p_hidden, ent = model.step(x, pos, cond, tbias, kv, kv_bias, probe=True)
    assert torch.equal(logits, p_logits) and torch.equal(new_kv, p_kv) and torch.equal(hidden, p_hidden)
    b, n = x.shape[:2]
    live = int((kv_bias == 0).sum())
    assert ent.shape == (b, model.cfg.depth, n)
    assert ent.min() >= 0 and ent.max() <= math.log(live + n) + 1e-5
    # by hand: softmax of the cosine logits over [live cache; scale], entropy averaged over heads
    h, rope = model.embed(x, pos, cond.sos), model.rope(pos)
    bias = torch.cat((kv_bias, torch.zeros(n)))
    for i, blk in enumerate(model.blocks):
        ada = cond.ada[:, i]
        q, k, _ = blk.sa.qkv(blk.sa_input(h, ada), rope)
        probs = (q @ torch.cat((kv[:, i, 0], k), 2).transpose(-1, -2) + bias).softmax(-1)
        torch.testing.assert_close(ent[:, i], torch.special.entr(probs).sum(-1).mean(1), atol=1e-5, rtol=1e-5)
        h, *_ = blk(h, ada, rope, Past(kv[:, i, 0], kv[:, i, 1], kv_bias), cond.ca_kv[:, i], tbias)
    assert (ent[:, :, 1:] - ent[:, :, :1]).abs().max() > 1e-3  # tokens differ: not a constant


def test_layer_set_step_adds_keys_and_values_of_skipped_blocks():
    model = tiny_infinity()
    x, pos, cond, tbias, kv, kv_bias = _scale_inputs(model)
    logits, new_kv, _ = model.step(x, pos, cond, tbias, kv, kv_bias, layers=(0, 2))
    full, full_kv, _ = model.step(x, pos, cond, tbias, kv, kv_bias)
    assert torch.equal(new_kv[:, 0], full_kv[:, 0]) and not torch.allclose(logits, full)
    # block 1 is skipped: its keys/values are those of block 0's output, block 3's of block 2's
    h, rope = model.embed(x, pos, cond.sos), model.rope(pos)
    blk0, blk1 = model.blocks[:2]
    h, *_ = blk0(h, cond.ada[:, 0], rope, Past(kv[:, 0, 0], kv[:, 0, 1], kv_bias), cond.ca_kv[:, 0], tbias)
    k1, v1 = blk1.keys_values(h, cond.ada[:, 1], rope)
    torch.testing.assert_close(new_kv[:, 1], torch.stack((k1, v1), 1))


def test_fastvar_keeping_every_token_is_the_dense_step():
    model = tiny_infinity()
    x, pos, cond, tbias, kv, kv_bias = _scale_inputs(model)
    b, n = x.shape[:2]
    depth, c = model.cfg.depth, model.cfg.width
    logits, new_kv, _ = model.step(x, pos, cond, tbias, kv, kv_bias)
    bias = kv_bias.expand(depth, -1)
    every, deltas = torch.arange(n), torch.zeros(b, depth, 3, n, c)
    # no block pruned: the dense step, slot for slot
    f_logits, f_kv, f_deltas = model.step_fastvar(x, pos, cond, tbias, kv, bias, every, deltas, range(0))
    torch.testing.assert_close(f_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_kv, new_kv, atol=1e-5, rtol=1e-5)
    # every block pruned with k = n: the same logits; keys/values in pivotal order (compare sorted)
    p_logits, p_kv, p_deltas = model.step_fastvar(x, pos, cond, tbias, kv, bias, every, deltas, range(depth))
    torch.testing.assert_close(p_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_kv.sort(dim=4).values, new_kv.sort(dim=4).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_deltas, f_deltas, atol=1e-5, rtol=1e-5)
    # the deltas are each sub-block's residual delta, in position order: block 0 by hand ...
    h, rope = model.embed(x, pos, cond.sos), model.rope(pos)
    blk, ada = model.blocks[0], cond.ada[:, 0]
    d_sa, _, _ = blk.sa_branch(h, ada, rope, Past(kv[:, 0, 0], kv[:, 0, 1], kv_bias))
    d_ca = blk.ca_branch(h + d_sa, cond.ca_kv[:, 0], tbias)
    d_ffn = blk.ffn_branch(h + d_sa + d_ca, ada)
    torch.testing.assert_close(p_deltas[:, 0], torch.stack((d_sa, d_ca, d_ffn), 1), atol=1e-5, rtol=1e-5)
    # ... and all of them together carry the embedding to the head's input
    torch.testing.assert_close(model.logits(h + p_deltas.sum((1, 2)), cond.head_ada), logits, atol=1e-5, rtol=1e-5)


def test_fastvar_prunes_each_sub_block_to_its_pivotal_tokens():
    model = tiny_infinity()
    x, pos, cond, tbias, kv, kv_bias = _scale_inputs(model, spread=False)
    b, n = x.shape[:2]
    depth, c, keep = model.cfg.depth, model.cfg.width, 16
    bias = kv_bias.expand(depth, -1).clone()
    bias[1, 5:21] = -torch.inf  # block 1 sees fewer slots than the others: kv_bias is per block
    rank = torch.arange(keep)
    deltas = torch.randn(b, depth, 3, n, c, generator=torch.Generator().manual_seed(9)) * 0.1
    logits, new_kv, new_deltas = model.step_fastvar(x, pos, cond, tbias, kv, bias, rank, deltas, range(1, 3))
    # a pruned scale's call leaves its deltas out and computes the same logits and keys/values
    lean = model.step_fastvar(x, pos, cond, tbias, kv, bias, rank, deltas, range(1, 3), returns_deltas=False)
    assert len(lean) == 2 and torch.equal(lean[0], logits) and torch.equal(lean[1], new_kv)
    assert logits.shape == (b, n, model.cfg.vocab) and torch.isfinite(logits).all()
    assert (new_kv[:, 1:3, :, :, keep:] == 0).all() and (new_kv[:, 1:3, :, :, :keep] != 0).any()
    # pruned sub-blocks: n - k positions of every row take the cached delta
    same = (new_deltas[:, 1:3] == deltas[:, 1:3]).all(-1).sum(-1)
    assert (same == n - keep).all(), same
    assert torch.equal(new_deltas[:, 3] == deltas[:, 3], torch.zeros_like(deltas[:, 3], dtype=torch.bool))
    # block 0 runs dense; block 1's self-attention by hand: pivotal tokens of block 0's output,
    # RoPE at their own positions, block 1's own cache bias
    dense_logits, dense_kv, _ = model.step(x, pos, cond, tbias, kv, kv_bias)
    torch.testing.assert_close(new_kv[:, 0], dense_kv[:, 0])
    h = model.embed(x, pos, cond.sos) + new_deltas[:, 0, 0] + new_deltas[:, 0, 1] + new_deltas[:, 0, 2]  # in order
    idx = pivotal_tokens(h, rank)
    blk = model.blocks[1]
    d, k1, v1 = blk.sa_branch(
        gather_tokens(h, idx),
        cond.ada[:, 1],
        model.rope(gather_tokens(pos, idx)),
        Past(kv[:, 1, 0], kv[:, 1, 1], bias[1]),
    )
    torch.testing.assert_close(gather_tokens(new_deltas[:, 1, 0], idx), d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_kv[:, 1, :, :, :keep], torch.stack((k1, v1), 1), atol=1e-5, rtol=1e-5)
    # the cross-attention and the FFN pick their own pivotal tokens, from the stream they read
    h = h + new_deltas[:, 1, 0]
    idx = pivotal_tokens(h, rank)
    d = blk.ca_branch(gather_tokens(h, idx), cond.ca_kv[:, 1], tbias)
    torch.testing.assert_close(gather_tokens(new_deltas[:, 1, 1], idx), d, atol=1e-5, rtol=1e-5)
    h = h + new_deltas[:, 1, 1]
    idx = pivotal_tokens(h, rank)
    d = blk.ffn_branch(gather_tokens(h, idx), cond.ada[:, 1])
    torch.testing.assert_close(gather_tokens(new_deltas[:, 1, 2], idx), d, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, dense_logits, atol=1e-3)


# ------------------------------------------------------------------ the new graphs through ONNX Runtime
@pytest.mark.slow
def test_new_step_graphs_through_onnx_runtime(tmp_path):
    """Probe, layer-set and FastVAR graphs exported and run by ONNX Runtime match eager torch. Two
    blocks (the export's cost is per block): block 1 alone runs in the layer set, and is pruned."""
    from varrt.engines.ort_engine import OrtEngine
    from varrt.engines.torch_engine import InfinityTorchEngine
    from varrt.export.exporter import ExportConfig
    from varrt.export.infinity_exporter import export_infinity_artifact

    model, vae = tiny_infinity(depth=2), tiny_bsq_vae()
    cfg = model.cfg
    shapes = [
        TextStepShape(2, 16, 20, 21, past=5, text=16, probe=True),
        TextStepShape(2, 16, 16, 21, past=5, text=16, layers=(1,)),
        InfinityFastVarShape(2, 16, 6, 21, (1, 2), past=5, text=16),
        InfinityFastVarShape(2, 16, 6, 21, (1, 2), returns_deltas=False, past=5, text=16),
    ]
    graphs = [infinity_step_spec(cfg, s) for s in shapes]
    out = tmp_path / "artifact"
    manifest = export_infinity_artifact(
        model, vae, None, graphs, out, config=ExportConfig(), schedule=TINY_SCHEDULE, batch=1, kv_capacity=21,
        plans=[], source={"random_weights": {"model": "tests.helpers.tiny_infinity()"}},
    )  # fmt: skip
    assert list(manifest.components) == [
        "infinity_transformer_probe",
        "infinity_transformer_layers",
        "infinity_transformer_fastvar",
    ]
    assert manifest.components["infinity_transformer_fastvar"]["blocks"] == [1, 2]
    assert manifest.components["infinity_transformer_layers"]["blocks"] == [1]
    assert "blocks" not in manifest.components["infinity_transformer_probe"]
    # the static graph of a pruned scale drops the deltas output and the nodes only it needed (the
    # export checks each static shape on the component graph specialised in memory; none is written)
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(f"{c}.onnx" for c in manifest.components)
    fastvar = onnx.load(out / "infinity_transformer_fastvar.onnx", load_external_data=False)
    with_deltas, lean = (specialize(fastvar, g) for g in graphs[2:])
    assert [o.name for o in lean.graph.output] == ["logits", "new_kv"]
    assert len(lean.graph.node) < len(with_deltas.graph.node)
    ort, eager = OrtEngine(out), InfinityTorchEngine(model, vae)
    for graph in graphs:
        assert ort.has_graph(graph) and eager.has_graph(graph)
        feeds = random_feeds(graph, TINY_SCHEDULE.total_tokens, 0)
        ref, got = eager.run(graph, feeds), ort.run(graph, feeds)
        for spec in graph.outputs:
            r, c = ref[spec.name], got[spec.name]
            assert c.shape == spec.shape, (graph.name, spec.name)
            if spec.name == "new_kv" and graph.component == "infinity_transformer_fastvar":
                r, c = slot_order_free(r), slot_order_free(c)
            torch.testing.assert_close(c, r, atol=1e-4, rtol=1e-4, msg=f"{graph.name}: {spec.name}")
