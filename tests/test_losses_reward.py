"""Pinned values and invariants of the reward-model losses (plugins/reward_model/losses.py)."""

from __future__ import annotations

import math

import torch

from alignkit.plugins.reward_model.losses import bradley_terry, pointwise_mse

F64 = torch.float64


def _t(*v: float, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype)


def test_bt_pinned() -> None:
    # r_c = 2, r_r = 1: d = 1; -log σ(1) = log(1 + e^-1) = 0.31326168751822286
    # r_c = 0, r_r = 3: d = -3; -log σ(-3) = log(1 + e^3) = 3.048587351573742
    loss = bradley_terry(_t(2.0, 0.0), _t(1.0, 3.0))
    expected = _t(math.log1p(math.exp(-1.0)), math.log1p(math.exp(3.0)))
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    loss32 = bradley_terry(_t(2.0, 0.0, dtype=torch.float32), _t(1.0, 3.0, dtype=torch.float32))
    torch.testing.assert_close(loss32, _t(0.31326168751822286, 3.048587351573742, dtype=torch.float32), rtol=0, atol=1e-6)


def test_bt_margin_pinned() -> None:
    # r_c = 2, r_r = 1, m = 0.5: d = 2 - 1 - 0.5 = 0.5; log(1 + e^-0.5) = 0.47407698418010669
    loss = bradley_terry(_t(2.0), _t(1.0), margin=_t(0.5))
    torch.testing.assert_close(loss, _t(0.47407698418010669), rtol=0, atol=1e-12)


def test_bt_center_pinned() -> None:
    # d = 1 → 0.31326168751822286; centering 0.1·(2 + 1)² = 0.9 → 1.21326168751822286
    loss = bradley_terry(_t(2.0), _t(1.0), center_weight=0.1)
    torch.testing.assert_close(loss, _t(0.31326168751822286 + 0.9), rtol=0, atol=1e-12)


def test_bt_soft_labels_pinned() -> None:
    # d = 1, p = 0.75: 0.75·log(1+e^-1) + 0.25·log(1+e^1), and log(1+e^1) = 1 + log(1+e^-1)
    #   = log(1+e^-1) + 0.25 = 0.56326168751822286
    loss = bradley_terry(_t(2.0), _t(1.0), soft_labels=_t(0.75))
    torch.testing.assert_close(loss, _t(0.56326168751822286), rtol=0, atol=1e-12)
    # p = 0.5 is indifference: log(1+e^-1) + 0.5 = 0.81326168751822286, same for either order
    torch.testing.assert_close(bradley_terry(_t(2.0), _t(1.0), soft_labels=_t(0.5)), _t(0.81326168751822286))
    torch.testing.assert_close(bradley_terry(_t(1.0), _t(2.0), soft_labels=_t(0.5)), _t(0.81326168751822286))


def test_bt_soft_labels_one_equals_hard() -> None:
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(16, generator=g, dtype=F64), torch.randn(16, generator=g, dtype=F64)
    torch.testing.assert_close(bradley_terry(c, r, soft_labels=torch.ones(16, dtype=F64)), bradley_terry(c, r))


def test_bt_gradient_signs() -> None:
    c = torch.randn(8, dtype=F64, requires_grad=True)
    r = torch.randn(8, dtype=F64, requires_grad=True)
    bradley_terry(c, r).sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


def test_mse_mask_pinned() -> None:
    nan = float("nan")
    pred = _t(1, 2, 3, 0, 0, 0, 1, 1, 1).view(3, 3).requires_grad_(True)
    target = _t(1, 0, 6, nan, 5, 5, 0, 0, 0).view(3, 3)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    loss = pointwise_mse(pred, target, mask)
    # row 0: (0² + 2² + 3²) / 3 = 13/3; row 1: nothing present → 0; row 2: (1² + 1²) / 2 = 1
    torch.testing.assert_close(loss, _t(13 / 3, 0.0, 1.0), rtol=0, atol=1e-12)
    loss.sum().backward()
    # d/dŷ of Σ (ŷ-y)²/n = 2(ŷ-y)/n at present entries, 0 elsewhere (and no NaN from the NaN label)
    expected_grad = _t(0, 2 * 2 / 3, 2 * -3 / 3, 0, 0, 0, 1, 0, 1).view(3, 3)
    torch.testing.assert_close(pred.grad, expected_grad)


def test_mse_no_mask_and_1d() -> None:
    # ((1-0)² + (3-1)²) / 2 = 2.5
    torch.testing.assert_close(pointwise_mse(_t(1, 3).view(1, 2), _t(0, 1).view(1, 2)), _t(2.5))
    # (B,) input: one attribute per row
    torch.testing.assert_close(pointwise_mse(_t(1, 3), _t(0, 1)), _t(1.0, 4.0))


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    c, r, m = (torch.randn(3, generator=g, dtype=F64, requires_grad=True) for _ in range(3))
    p = torch.rand(3, generator=g, dtype=F64, requires_grad=True)
    fn = lambda c, r, m, p: bradley_terry(c, r, margin=m, center_weight=0.3, soft_labels=p)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (c, r, m, p))
    pred = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    target = torch.randn(3, 4, generator=g, dtype=F64)
    mask = torch.rand(3, 4, generator=g) > 0.4
    assert torch.autograd.gradcheck(lambda x: pointwise_mse(x, target, mask), (pred,))
