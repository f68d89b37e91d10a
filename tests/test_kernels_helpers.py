"""Shared helpers of the kernel engines (label masking, upstream gradients) and the torch fused
engine's chunk boundaries, against hand-computed values."""

from __future__ import annotations

import torch

import alignkit.kernels as K
from alignkit.kernels import torch_linear_logprobs
from alignkit.kernels.token_stats import masked_grads, masked_labels


def test_masked_labels_zeroes_ignored_positions() -> None:
    valid, safe = masked_labels(torch.tensor([3, -100, 0, 7]), -100)
    assert valid.tolist() == [True, False, True, True]
    assert safe.tolist() == [3, 0, 0, 7]


def test_masked_grads_zero_at_ignored_rows_in_accumulation_dtype() -> None:
    valid = torch.tensor([True, False, True])
    g, ge = masked_grads(torch.tensor([1.5, 2.0, -3.0], dtype=torch.bfloat16), None, valid,
                         torch.float32)
    assert g.dtype == torch.float32 and g.tolist() == [1.5, 0.0, -3.0] and ge is None
    g, ge = masked_grads(torch.ones(3), torch.tensor([0.25, 9.0, -1.0]), valid, torch.float64)
    assert ge is not None and ge.dtype == torch.float64 and ge.tolist() == [0.25, 0.0, -1.0]


def test_torch_fused_engine_is_independent_of_the_chunk_size() -> None:
    # Same values and gradients whether the tokens go through in one chunk or in ragged chunks.
    gen = torch.Generator().manual_seed(5)
    n, d, v = 23, 8, 37
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64)  # (N, d)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64)  # (V, d)
    labels = torch.randint(0, v, (n,), generator=gen)  # (N,)
    labels[::4] = -100
    g = torch.randn(n, generator=gen, dtype=torch.float64)  # (N,)
    ge = torch.randn(n, generator=gen, dtype=torch.float64)  # (N,)
    kw = dict(ignore_index=-100, temperature=0.9)
    outs = []
    for chunk in (n, 5, 1):
        logp, lse, ent, dh = torch_linear_logprobs.linear_forward(
            hidden, weight, labels, entropy=False, grad_hidden=True, chunk=chunk, **kw)
        _, _, ent, _ = torch_linear_logprobs.linear_forward(
            hidden, weight, labels, entropy=True, grad_hidden=False, chunk=chunk, **kw)
        gh, gw, _ = torch_linear_logprobs.linear_backward(
            hidden, weight, labels, lse, ent, g, ge, need_hidden=True, need_weight=True,
            chunk=chunk, **kw)
        outs.append((logp, lse, ent, dh, gh, gw))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # dh from the forward is d logp_i / d h_i: the backward with g = 1 and no entropy gives it too
    _, _, _, dh, _, _ = outs[0]
    gh1, _, _ = torch_linear_logprobs.linear_backward(
        hidden, weight, labels, outs[0][1], None, torch.ones(n, dtype=torch.float64), None,
        need_hidden=True, need_weight=False, **kw)
    assert dh is not None and gh1 is not None
    torch.testing.assert_close(dh, gh1, rtol=1e-12, atol=1e-12)
    assert (dh[::4] == 0).all()


def test_public_op_matches_autograd_reference_with_uniform_and_ragged_grads() -> None:
    # Per-token upstream gradients (PPO-like) and a plain sum (SFT-like) through the public op.
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 30, (2, 6), generator=gen)
    labels[0, :3] = -100
    z = hidden @ weight.T  # (B, T, V)
    ref = torch.log_softmax(z, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    ref = ref * (labels != -100)  # (B, T)
    for upstream in (torch.ones(2, 6, dtype=torch.float64),
                     torch.randn(2, 6, generator=gen, dtype=torch.float64)):
        out = K.linear_token_logprobs(hidden, weight, labels, backend="torch")  # (B, T)
        a = torch.autograd.grad((out * upstream).sum(), (hidden, weight))
        b = torch.autograd.grad((ref * upstream).sum(), (hidden, weight), retain_graph=True)
        torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-10)
