"""Pinned values and invariants of the DPO-family losses (plugins/dpo/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.plugins.dpo.losses import dpo, dpo_implicit_rewards, ipo, robust_dpo

F64 = torch.float64


def _softplus(x: float) -> float:
    # −log σ(−x) = log(1 + e^x), written out so the expected values do not reuse torch.
    return math.log1p(math.exp(x))


def _example(dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    # policy_chosen=-1, policy_rejected=-3, ref_chosen=-2, ref_rejected=-2
    # h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2
    t = lambda v: torch.tensor([v], dtype=dtype)  # noqa: E731
    return t(-1.0), t(-3.0), t(-2.0), t(-2.0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 1.0, 10.0])
def test_dpo_at_init_is_exactly_ln2(beta: float, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    chosen = -100 * torch.rand(16, generator=g, dtype=dtype)  # (B,)
    rejected = -100 * torch.rand(16, generator=g, dtype=dtype)  # (B,)
    # policy == reference: h = 0 exactly, loss = -log σ(0) = ln 2
    loss = dpo(chosen, rejected, chosen.clone(), rejected.clone(), beta=beta)
    assert torch.equal(loss, torch.full_like(loss, math.log(2)))


def test_dpo_pinned() -> None:
    # β = 0.5, h = 2 → βh = 1; loss = -log σ(1) = log(1 + e^-1) = 0.31326168751822286
    loss = dpo(*_example(), beta=0.5)
    torch.testing.assert_close(loss, torch.tensor([_softplus(-1.0)], dtype=F64), rtol=0, atol=1e-12)
    assert abs(_softplus(-1.0) - 0.31326168751822286) < 1e-15


def test_dpo_pinned_fp32() -> None:
    loss = dpo(*_example(torch.float32), beta=0.5)
    torch.testing.assert_close(loss, torch.tensor([0.31326168751822286]), rtol=0, atol=1e-6)


def test_cdpo_pinned() -> None:
    # ε = 0.1, βh = 1: 0.9·log(1+e^-1) + 0.1·log(1+e^1)
    #   log(1+e^1) = 1 + log(1+e^-1)  →  loss = log(1+e^-1) + 0.1 = 0.41326168751822286
    loss = dpo(*_example(), beta=0.5, label_smoothing=0.1)
    expected = 0.9 * _softplus(-1.0) + 0.1 * _softplus(1.0)
    assert abs(expected - 0.41326168751822286) < 1e-14
    torch.testing.assert_close(loss, torch.tensor([expected], dtype=F64), rtol=0, atol=1e-12)


def test_cdpo_with_zero_smoothing_equals_dpo() -> None:
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(8, generator=g, dtype=F64) * 5 for _ in range(4)]
    assert torch.equal(dpo(*args, beta=0.3, label_smoothing=0.0), dpo(*args, beta=0.3))


def test_dpo_rejects_bad_label_smoothing() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(*_example(), label_smoothing=0.7)


def test_dpo_gradient_pushes_chosen_up_rejected_down() -> None:
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (torch.randn(32, generator=g, dtype=F64) * 3 for _ in range(4))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    dpo(pc, pr, rc, rr, beta=0.1).sum().backward()
    # Gradient descent moves against the gradient: d loss/d chosen < 0 raises log π(chosen),
    # d loss/d rejected > 0 lowers log π(rejected).
    assert (pc.grad < 0).all()
    assert (pr.grad > 0).all()
    # dpo depends on chosen and rejected only through h, so the two gradients are opposite.
    torch.testing.assert_close(pc.grad, -pr.grad)


def test_ipo_pinned() -> None:
    # τ = 0.5 → target 1/(2·0.5) = 1; h = 2 → (2 - 1)² = 1
    # τ = 0.25 → target 2 → (2 - 2)² = 0
    # τ = 1 → target 0.5 → (2 - 0.5)² = 2.25
    for tau, expected in [(0.5, 1.0), (0.25, 0.0), (1.0, 2.25)]:
        loss = ipo(*_example(), tau=tau)
        torch.testing.assert_close(loss, torch.tensor([expected], dtype=F64), rtol=0, atol=1e-12)


def test_ipo_rejects_nonpositive_tau() -> None:
    with pytest.raises(ValueError, match="tau"):
        ipo(*_example(), tau=0.0)


def test_robust_dpo_pinned() -> None:
    # ε = 0.1, βh = 1: (0.9·log(1+e^-1) - 0.1·log(1+e^1)) / 0.8
    #   = (0.9 s - 0.1 (1 + s)) / 0.8 with s = log(1+e^-1)  =  s - 0.125 = 0.18826168751822286
    loss = robust_dpo(*_example(), beta=0.5, label_smoothing=0.1)
    expected = (0.9 * _softplus(-1.0) - 0.1 * _softplus(1.0)) / 0.8
    assert abs(expected - 0.18826168751822286) < 1e-14
    torch.testing.assert_close(loss, torch.tensor([expected], dtype=F64), rtol=0, atol=1e-12)


def test_robust_dpo_with_zero_smoothing_equals_dpo() -> None:
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(8, generator=g, dtype=F64) * 5 for _ in range(4)]
    assert torch.equal(robust_dpo(*args, beta=0.2, label_smoothing=0.0), dpo(*args, beta=0.2))


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_robust_dpo_rejects_eps_out_of_range(eps: float) -> None:
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 0.5\)"):
        robust_dpo(*_example(), label_smoothing=eps)


def test_implicit_rewards_pinned() -> None:
    # β = 0.5: chosen = 0.5·(-1 - -2) = 0.5; rejected = 0.5·(-3 - -2) = -0.5
    pc, pr, rc, rr = _example()
    pc.requires_grad_(True)
    chosen, rejected = dpo_implicit_rewards(pc, pr, rc, rr, beta=0.5)
    torch.testing.assert_close(chosen, torch.tensor([0.5], dtype=F64))
    torch.testing.assert_close(rejected, torch.tensor([-0.5], dtype=F64))
    assert chosen.requires_grad
    chosen_d, _ = dpo_implicit_rewards(pc, pr, rc, rr, beta=0.5, detach=True)
    assert not chosen_d.requires_grad


def test_dpo_is_bt_on_implicit_rewards() -> None:
    # DPO == -log σ(r_c - r_r) with the implicit rewards: the link the paper's title refers to.
    g = torch.Generator().manual_seed(4)
    args = [torch.randn(8, generator=g, dtype=F64) for _ in range(4)]
    chosen, rejected = dpo_implicit_rewards(*args, beta=0.3)
    torch.testing.assert_close(dpo(*args, beta=0.3), -torch.nn.functional.logsigmoid(chosen - rejected))


@pytest.mark.parametrize(
    "fn, kwargs",
    [
        (dpo, {"beta": 0.7}),
        (dpo, {"beta": 0.7, "label_smoothing": 0.2}),
        (ipo, {"tau": 0.3}),
        (robust_dpo, {"beta": 0.7, "label_smoothing": 0.2}),
    ],
)
def test_gradcheck(fn, kwargs) -> None:
    g = torch.Generator().manual_seed(5)
    args = tuple(torch.randn(3, generator=g, dtype=F64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(lambda *a: fn(*a, **kwargs), args)
