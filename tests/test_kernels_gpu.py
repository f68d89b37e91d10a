"""The Triton kernels on a real CUDA device against log_softmax + gather (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import alignkit.kernels as K
from alignkit.kernels.reference import naive_token_stats

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

B, T, V, D = 4, 128, 5000, 256  # V, d not multiples of the blocks; 512 tokens


def _data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(B, T, D, device="cuda", generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(V, D, device="cuda", generator=gen) * D**-0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), device="cuda", generator=gen)
    labels[0, :10] = -100
    labels[1] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False], ids=["linear", "logits"])
def test_triton_on_cuda_matches_reference(dtype: torch.dtype, fused: bool) -> None:
    hidden, weight, labels = _data(dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    ref = naive_token_stats(h32 @ w32.T, labels, temperature=0.8)
    g = torch.randn(B, T, device="cuda")
    loss = lambda s: (s.logprobs * g).sum() + s.entropy.sum() + s.mean.sum()  # noqa: E731
    ref_gh, ref_gw = torch.autograd.grad(loss(ref), (h32, w32))
    if fused:
        stats = K.linear_token_stats(hidden, weight, labels, temperature=0.8, entropy=True)
    else:
        logits = (h32 @ w32.T).detach().to(dtype).requires_grad_()
        ref = naive_token_stats(logits.float(), labels, temperature=0.8)
        stats = K.token_stats(logits, labels, temperature=0.8, entropy=True)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for got, want in ((stats.logprobs, ref.logprobs), (stats.entropy, ref.entropy),
                      (stats.mean, ref.mean)):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert stats.count.tolist() == ref.count.tolist()
    if fused:
        gh, gw = torch.autograd.grad(loss(stats), (hidden, weight))
        torch.testing.assert_close(gh.float(), ref_gh, atol=tol * 5, rtol=tol * 5)
        torch.testing.assert_close(gw.float(), ref_gw, atol=tol * 5, rtol=tol * 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 3.0], ids=["nocap", "softcap"])
def test_triton_logit_processing_on_cuda_matches_reference(dtype: torch.dtype, softcap: float | None) -> None:
    # A Phi / Granite / Gemma-style head: bias, scale and (optionally) soft cap, gradients for all three.
    hidden, weight, labels = _data(dtype)
    gen = torch.Generator(device="cuda").manual_seed(1)
    bias = torch.randn(V, device="cuda", generator=gen).to(dtype).requires_grad_()
    torch.backends.cuda.matmul.allow_tf32 = False
    leaves = [x.detach().double().requires_grad_() for x in (hidden, weight, bias)]
    a = (leaves[0] @ leaves[1].T + leaves[2]) * 0.75  # (B, T, V)
    if softcap is not None:
        a = softcap * torch.tanh(a / softcap)
    ref = naive_token_stats(a, labels, temperature=0.8)
    g = torch.randn(B, T, device="cuda", dtype=torch.float64)
    loss = lambda s: (s.logprobs * g).sum() + s.entropy.sum() + s.mean.sum()  # noqa: E731
    want = torch.autograd.grad(loss(ref), leaves)
    stats = K.linear_token_stats(hidden, weight, labels, temperature=0.8, entropy=True, bias=bias,
                                 logit_scale=0.75, softcap=softcap)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for got, ref_value in ((stats.logprobs, ref.logprobs), (stats.entropy, ref.entropy), (stats.mean, ref.mean)):
        torch.testing.assert_close(got.double(), ref_value, atol=tol, rtol=tol)
    grads = torch.autograd.grad(loss(stats), (hidden, weight, bias))
    for got, ref_grad in zip(grads, want):
        torch.testing.assert_close(got.double(), ref_grad, atol=tol * 5, rtol=tol * 5)
