"""The functional per-scale step: explicit KV tensors, scale by scale == one masked forward."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_var, tiny_vqvae
from varrt.export.configs import PATCH_NUMS_512
from varrt.export.var import VAR


def step_through(var: VAR, labels: torch.Tensor, x_BLCv: torch.Tensor) -> torch.Tensor:
    sched = var.cfg.schedule
    b = labels.shape[0]
    cond = var.condition(labels)
    kv, kv_bias = var.empty_kv(b, sched.total_tokens)
    x_full = torch.cat((x_BLCv.new_zeros(b, 1, x_BLCv.shape[2]), x_BLCv), dim=1)
    out = []
    for bg, ed in sched.begin_ends:
        logits, new_kv, _ = var.step(x_full[:, bg:ed], torch.arange(bg, ed).expand(b, -1), cond, kv, kv_bias)
        kv[..., bg:ed, :] = new_kv
        kv_bias[bg:ed] = 0
        out.append(logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize(
    ("depth", "patch_nums", "shared"),
    [
        (2, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), False),
        (4, (1, 2, 3, 4, 6, 8), False),
        (2, PATCH_NUMS_512, True),
    ],
)
def test_step_loop_equals_masked_forward(depth, patch_nums, shared):
    var = tiny_var(depth, patch_nums=patch_nums, shared_aln=shared)
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([3, 1000])
    x = torch.randn(2, var.cfg.schedule.total_tokens - 1, 32, generator=g)
    with torch.no_grad():
        ref = var(labels, x)
        got = step_through(var, labels, x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_step_is_pure():
    """Same inputs, same outputs; the cache passed in is not modified."""
    var = tiny_var(2)
    cond = var.condition(torch.tensor([5]))
    kv, bias = var.empty_kv(1, 20)
    kv.normal_()
    bias[:5] = 0
    before = kv.clone()
    x = torch.randn(1, 9, 32)
    a = var.step(x, torch.arange(5, 14).view(1, -1), cond, kv, bias)
    b = var.step(x, torch.arange(5, 14).view(1, -1), cond, kv, bias)
    assert torch.equal(kv, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].shape == (1, 2, 2, 2, 9, 64)


def test_empty_slots_do_not_contribute():
    """Garbage in masked cache slots must not change the result (capacity larger than the past)."""
    var = tiny_var(2)
    cond = var.condition(torch.tensor([5]))
    kv, bias = var.empty_kv(1, 30)
    kv[..., :5, :].normal_()
    bias[:5] = 0
    x = torch.randn(1, 9, 32)
    a = var.step(x, torch.arange(5, 14).view(1, -1), cond, kv, bias)[0]
    kv[..., 5:, :].normal_()
    b = var.step(x, torch.arange(5, 14).view(1, -1), cond, kv, bias)[0]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_encode_decode_shapes():
    vq = tiny_vqvae(patch_nums=(1, 2, 4, 8))
    img = torch.rand(2, 3, 16, 16)
    idx = vq.img_to_indices(img)
    assert [tuple(i.shape) for i in idx] == [(2, 1), (2, 4), (2, 16), (2, 64)]
    f_hat = vq.quantize.indices_to_fhat(idx)
    assert f_hat.shape == (2, 32, 8, 8)
    out = vq.decode(f_hat)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_teacher_inputs_are_the_generation_inputs():
    """idxBl_to_var_input == the next-scale inputs the sampler builds from the same indices."""
    vq = tiny_vqvae()
    q = vq.quantize
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, 4096, (2, pn * pn), generator=g) for pn in q.patch_nums]
    teacher = q.teacher_inputs(idx)
    f_hat = torch.zeros(2, 32, 16, 16)
    nexts = []
    for si, pn in enumerate(q.patch_nums[:-1]):
        f_hat, nxt = q.next_input(si, f_hat, q.codes_to_map(q.embedding(idx[si]), pn))
        nexts.append(nxt.flatten(2).transpose(1, 2))
    assert torch.equal(teacher, torch.cat(nexts, 1))
    assert teacher.shape == (2, 679, 32)
