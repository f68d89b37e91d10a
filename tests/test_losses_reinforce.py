"""Pinned values and invariants of the REINFORCE math (plugins/reinforce/losses.py, alignkit.rl advantages)."""

from __future__ import annotations

import pytest
import torch

from alignkit.plugins.reinforce.losses import policy_gradient
from alignkit.rl import group_normalized_advantages, moving_average_baseline, rloo_advantages

F64 = torch.float64


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (F64, 1e-14)])
def test_rloo_pinned(dtype: torch.dtype, atol: float) -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]], dtype=dtype)
    # row 0, k = 4, Σ = 12: A_i = r_i - (12 - r_i)/3
    #   1 - 11/3 = -8/3;  2 - 10/3 = -4/3;  3 - 9/3 = 0;  6 - 6/3 = 4
    #   check: k/(k-1)·(r - mean) = 4/3·([1,2,3,6] - 3) = [-8/3, -4/3, 0, 4]
    # row 1, Σ = 2: 0 - 2/3 = -2/3;  1 - 1/3 = 2/3
    expected = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [-2 / 3, -2 / 3, 2 / 3, 2 / 3]], dtype=dtype)
    torch.testing.assert_close(rloo_advantages(rewards), expected, rtol=0, atol=atol)


def test_rloo_sums_to_zero_and_matches_scaled_mean_form() -> None:
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 8):
        r = torch.randn(16, k, generator=g, dtype=F64) * 3
        a = rloo_advantages(r)
        torch.testing.assert_close(a.sum(dim=-1), torch.zeros(16, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(a, k / (k - 1) * (r - r.mean(dim=-1, keepdim=True)))


@pytest.mark.parametrize("fn", [rloo_advantages, group_normalized_advantages])
def test_group_functions_need_two_samples(fn) -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        fn(torch.zeros(4, 1))


def test_group_normalized_pinned() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], dtype=F64)
    # row 0: mean 2, unbiased std sqrt(((-1)² + 0 + 1²)/2) = 1 → [-1, 0, 1]
    # row 1: all equal → 0/(0 + eps) = 0, not NaN
    torch.testing.assert_close(
        group_normalized_advantages(r, eps=0.0)[0], torch.tensor([-1.0, 0.0, 1.0], dtype=F64), rtol=0, atol=1e-14
    )
    assert (group_normalized_advantages(r)[1] == 0).all()
    # eps = 1e-6: [-1, 0, 1] / (1 + 1e-6)
    torch.testing.assert_close(
        group_normalized_advantages(r)[0], torch.tensor([-1.0, 0.0, 1.0], dtype=F64) / (1 + 1e-6), rtol=0, atol=1e-14
    )
    # Dr. GRPO: mean-centred only, [1, 2, 3] - 2
    torch.testing.assert_close(
        group_normalized_advantages(r, scale_by_std=False)[0], torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    )


def test_moving_average_baseline() -> None:
    # 0.9·1 + 0.1·mean([2, 4]) = 0.9 + 0.3 = 1.2
    r = torch.tensor([2.0, 4.0], dtype=F64, requires_grad=True)
    b = moving_average_baseline(1.0, r, decay=0.9)
    torch.testing.assert_close(b, torch.tensor(1.2, dtype=F64), rtol=0, atol=1e-14)
    assert not b.requires_grad
    # tensor baseline in, and decay = 0 is the batch mean
    torch.testing.assert_close(moving_average_baseline(torch.tensor(5.0), r, decay=0.0), torch.tensor(3.0, dtype=F64))


def test_policy_gradient_pinned_and_detached() -> None:
    seq_logps = torch.tensor([-2.0, -1.0], dtype=F64, requires_grad=True)
    adv = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    loss = policy_gradient(seq_logps, adv)
    # -A·log π: -(1)(-2) = 2;  -(-0.5)(-1) = -0.5
    torch.testing.assert_close(loss, torch.tensor([2.0, -0.5], dtype=F64), rtol=0, atol=1e-14)
    loss.sum().backward()
    torch.testing.assert_close(seq_logps.grad, -adv.detach())  # d/dlogπ = -A
    assert adv.grad is None


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    r = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(rloo_advantages, (r,))
    assert torch.autograd.gradcheck(group_normalized_advantages, (r,))
    logps = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    adv = torch.randn(5, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda x: policy_gradient(x, adv), (logps,))
