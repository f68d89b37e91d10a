"""Pinned values and invariants of the K-wise losses (plugins/kwise/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.plugins.reward_model.losses import bradley_terry, pairwise_split, plackett_luce

F64 = torch.float64


def test_pinned_k3() -> None:
    # rewards [2, 1, 0], best first:
    #   j=1: log(e^2 + e^1 + e^0) - 2 = log(1 + e^-1 + e^-2) = 0.40760596444438030
    #   j=2: log(e^1 + e^0) - 1       = log(1 + e^-1)         = 0.31326168751822286
    #   j=3: log(e^0) - 0             = 0
    #   total 0.72086765196260316
    expected = math.log(1 + math.exp(-1) + math.exp(-2)) + math.log1p(math.exp(-1))
    assert abs(expected - 0.72086765196260316) < 1e-14
    loss = plackett_luce(torch.tensor([[2.0, 1.0, 0.0]], dtype=F64))
    torch.testing.assert_close(loss, torch.tensor([expected], dtype=F64), rtol=0, atol=1e-12)
    loss32 = plackett_luce(torch.tensor([[2.0, 1.0, 0.0]]))
    torch.testing.assert_close(loss32, torch.tensor([0.72086765196260316]), rtol=0, atol=1e-6)


def test_pinned_reversed_order() -> None:
    # rewards [0, 1, 2] (worst item ranked first):
    #   log(1 + e^1 + e^2) - 0 = 2.40760596444438030;  log(e^1 + e^2) - 1 = log(1 + e^1) = 1.31326168751822286
    #   total 3.72086765196260316
    loss = plackett_luce(torch.tensor([[0.0, 1.0, 2.0]], dtype=F64))
    torch.testing.assert_close(loss, torch.tensor([3.72086765196260316], dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (F64, 1e-13)])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0])
def test_k2_equals_bradley_terry(dtype: torch.dtype, atol: float, scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4096, 2, generator=g, dtype=dtype) * scale  # (B, 2)
    torch.testing.assert_close(plackett_luce(r), bradley_terry(r[:, 0], r[:, 1]), rtol=1e-6, atol=atol)


def test_k2_gradient_equals_bradley_terry() -> None:
    r1 = torch.randn(64, 2, dtype=F64, requires_grad=True)
    r2 = r1.detach().clone().requires_grad_(True)
    plackett_luce(r1).sum().backward()
    bradley_terry(r2[:, 0], r2[:, 1]).sum().backward()
    torch.testing.assert_close(r1.grad, r2.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pad", [0.0, 1e6, -1e6, float("-inf"), float("nan")])
def test_mask_equals_shorter_list(pad: float) -> None:
    g = torch.Generator().manual_seed(1)
    full = torch.randn(3, 5, generator=g, dtype=F64)  # (B, K)
    lengths = [5, 3, 1]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]  # (B, K)
    padded = torch.where(mask, full, torch.full_like(full, pad)).requires_grad_(True)
    loss = plackett_luce(padded, mask)
    expected = torch.stack([plackett_luce(full[i : i + 1, :n])[0] for i, n in enumerate(lengths)])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    assert loss[2] == 0  # a single present item has nothing to be ranked against
    loss.sum().backward()
    assert torch.isfinite(padded.grad).all()
    assert (padded.grad[~mask] == 0).all()


def test_all_masked_row_is_zero() -> None:
    r = torch.randn(2, 3, dtype=F64)
    mask = torch.tensor([[False] * 3, [True] * 3])
    loss = plackett_luce(r, mask)
    assert loss[0] == 0
    torch.testing.assert_close(loss[1], plackett_luce(r[1:])[0])


def test_invariant_to_row_constant() -> None:
    g = torch.Generator().manual_seed(2)
    r = torch.randn(8, 4, generator=g, dtype=F64)
    shift = torch.randn(8, 1, generator=g, dtype=F64) * 50  # a different constant per row
    torch.testing.assert_close(plackett_luce(r + shift), plackett_luce(r), rtol=0, atol=1e-10)


def test_is_sum_of_softmax_choices() -> None:
    # Reference: Σ_j -log softmax(r_j..r_K)[0], with a Python loop over j.
    g = torch.Generator().manual_seed(3)
    r = torch.randn(5, 4, generator=g, dtype=F64)
    expected = sum(-torch.log_softmax(r[:, j:], dim=-1)[:, 0] for j in range(4))
    torch.testing.assert_close(plackett_luce(r), expected)


def test_pairwise_split() -> None:
    r = torch.tensor([[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    chosen, rejected, valid = pairwise_split(r, mask)
    # pairs (0,1), (0,2), (1,2)
    torch.testing.assert_close(chosen, torch.tensor([[3.0, 3.0, 2.0], [6.0, 6.0, 5.0]], dtype=F64))
    torch.testing.assert_close(rejected, torch.tensor([[2.0, 1.0, 1.0], [5.0, 4.0, 4.0]], dtype=F64))
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    _, _, all_valid = pairwise_split(r)
    assert all_valid.all()
    # K = 2: the single pair is the Bradley-Terry pair, same as Plackett-Luce
    c, rj, _ = pairwise_split(r[:, :2])
    torch.testing.assert_close(bradley_terry(c, rj)[:, 0], plackett_luce(r[:, :2]))


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(4)
    r = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: plackett_luce(x, mask), (r,))
    assert torch.autograd.gradcheck(plackett_luce, (r,))
