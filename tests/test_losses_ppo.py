"""Pinned values and invariants of the PPO math (plugins/ppo/losses.py) and the shared RL math it uses (alignkit.rl)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.plugins.ppo.losses import ppo_clip, ppo_clip_per_token, value_clip
from alignkit.rl import KL_ESTIMATORS, gae, kl_k1, kl_k2, kl_k3, kl_penalty, masked_mean, masked_whiten

F64 = torch.float64
E = math.e


def _row(*v: float, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor([v], dtype=dtype)  # (1, T)


# ---------------------------------------------------------------- GAE


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gae_td0_pinned(dtype: torch.dtype) -> None:
    # γ = 0.5, λ = 0 → A_t = δ_t = r_t + 0.5·V_{t+1} - V_t, V_4 = 0:
    #   δ0 = 0 + 0.5·1 - 0 = 0.5;  δ1 = 0 + 0.5·2 - 1 = 0;  δ2 = 1 + 0.5·3 - 2 = 0.5;  δ3 = 0 + 0 - 3 = -3
    # returns = A + V = [0.5, 1, 2.5, 0]
    adv, ret = gae(_row(0, 0, 1, 0, dtype=dtype), _row(0, 1, 2, 3, dtype=dtype), torch.ones(1, 4), gamma=0.5, lam=0.0)
    torch.testing.assert_close(adv, _row(0.5, 0, 0.5, -3, dtype=dtype), rtol=0, atol=1e-6)
    torch.testing.assert_close(ret, _row(0.5, 1, 2.5, 0, dtype=dtype), rtol=0, atol=1e-6)


def test_gae_lambda1_is_monte_carlo() -> None:
    # γ = 0.5, λ = 1: A_t = G_t - V_t with G_t = Σ_k γ^k r_{t+k}:
    #   G3 = 0;  G2 = 1 + 0.5·0 = 1;  G1 = 0 + 0.5·1 = 0.5;  G0 = 0 + 0.5·0.5 = 0.25
    #   A = G - V = [0.25 - 0, 0.5 - 1, 1 - 2, 0 - 3] = [0.25, -0.5, -1, -3];  returns = G
    adv, ret = gae(_row(0, 0, 1, 0), _row(0, 1, 2, 3), torch.ones(1, 4), gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv, _row(0.25, -0.5, -1, -3), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, _row(0.25, 0.5, 1, 0), rtol=0, atol=1e-12)


def test_gae_right_padding_in_batch() -> None:
    rewards = torch.tensor([[0, 0, 1, 0], [1, 2, 9, 9]], dtype=F64)  # (B, T); 9 = padding garbage
    values = torch.tensor([[0, 1, 2, 3], [0.5, 1, 7, 7]], dtype=F64)  # (B, T)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # (B, T)
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    # row 1 (length 2), γ = 0.5, λ = 0.5, γλ = 0.25; nothing is bootstrapped from the padding:
    #   δ1 = 2 + 0 - 1 = 1;   δ0 = 1 + 0.5·1 - 0.5 = 1
    #   A1 = 1;   A0 = 1 + 0.25·1 = 1.25;   returns = [1.25 + 0.5, 1 + 1] = [1.75, 2]
    torch.testing.assert_close(adv[1], torch.tensor([1.25, 1, 0, 0], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret[1], torch.tensor([1.75, 2, 0, 0], dtype=F64), rtol=0, atol=1e-12)
    # row 0 must not be affected by row 1's padding
    adv0, ret0 = gae(rewards[:1], values[:1], mask[:1], gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv[:1], adv0)
    torch.testing.assert_close(ret[:1], ret0)
    # and row 1 equals the unpadded sequence on its own
    adv1, _ = gae(rewards[1:, :2], values[1:, :2], mask[1:, :2], gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv[1:, :2], adv1)


# ---------------------------------------------------------------- clipped policy loss


def test_ppo_clip_per_token_pinned() -> None:
    # log ratio ±1 → ρ = e or 1/e; ε = 0.2
    logps = _row(1, -1, 1, -1, 0.5)
    old = torch.zeros(1, 5, dtype=F64)
    adv = _row(1, 1, -1, -1, 1)
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    loss = ppo_clip_per_token(logps, old, adv, mask, clip=0.2)
    # ρ=e,   A=1:  -min(e·1, 1.2·1)          = -1.2
    # ρ=1/e, A=1:  -min(0.367879·1, 0.8·1)   = -0.36787944117144233
    # ρ=e,   A=-1: -min(-e, -1.2)            =  e = 2.718281828459045
    # ρ=1/e, A=-1: -min(-0.367879, -0.8)     =  0.8
    # masked:                                   0
    expected = _row(-1.2, -1 / E, E, 0.8, 0.0)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    assert abs(1 / E - 0.36787944117144233) < 1e-15


def test_ppo_clip_pinned_fp32() -> None:
    loss = ppo_clip_per_token(_row(1, -1, dtype=torch.float32), torch.zeros(1, 2), _row(1, 1, dtype=torch.float32), torch.ones(1, 2))
    torch.testing.assert_close(loss, _row(-1.2, -0.367879, dtype=torch.float32), rtol=0, atol=1e-6)


def test_ppo_clip_mean_stats_and_grad() -> None:
    logps = _row(1, -1, 3).requires_grad_(True)
    old = torch.zeros(1, 3, dtype=F64)
    adv = _row(1, 1, 5)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    loss, stats = ppo_clip(logps, old, adv, mask, clip=0.2)
    # loss = (-1.2 - 1/e) / 2 = -0.78393972058572117
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 1 / E) / 2, dtype=F64), rtol=0, atol=1e-12)
    # clip_frac: token 0 is clipped (1.2 < e), token 1 is not (1/e < 0.8) → 1/2
    torch.testing.assert_close(stats["clip_frac"], torch.tensor(0.5, dtype=F64))
    # approx_kl = mean((ρ-1) - log ρ) = ((e - 1 - 1) + (1/e - 1 + 1)) / 2 = (e - 2 + 1/e)/2 = 0.54308063481524377
    torch.testing.assert_close(stats["approx_kl"], torch.tensor((E - 2 + 1 / E) / 2, dtype=F64))
    # ratio_mean = (e + 1/e) / 2 = cosh(1) = 1.5430806348152437
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(math.cosh(1), dtype=F64))
    assert all(not v.requires_grad for v in stats.values())
    loss.backward()
    # clipped token: no gradient; unclipped: d/dlogp of -ρA/2 = -ρA/2 = -1/(2e); masked: 0
    torch.testing.assert_close(logps.grad, _row(0, -1 / (2 * E), 0), rtol=0, atol=1e-12)


def test_ppo_clip_at_ratio_one_is_minus_advantage() -> None:
    adv = torch.randn(2, 6, dtype=F64)
    logps = torch.randn(2, 6, dtype=F64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    torch.testing.assert_close(ppo_clip_per_token(logps, logps.clone(), adv, mask), -adv)


# ---------------------------------------------------------------- clipped value loss


def test_value_clip_pinned() -> None:
    values = _row(1.5, 1.1, 9.0)
    old = _row(1.0, 1.0, 0.0)
    returns = _row(2.0, 2.0, 0.0)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    # token 0: V_clip = 1 + clip(0.5, ±0.2) = 1.2; 0.5·max((1.5-2)², (1.2-2)²) = 0.5·max(0.25, 0.64) = 0.32
    # token 1: V_clip = 1.1 (inside the range); 0.5·(1.1-2)² = 0.5·0.81 = 0.405
    # token 2: masked; mean = (0.32 + 0.405) / 2 = 0.3625
    loss = value_clip(values, old, returns, mask, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.3625, dtype=F64), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (F64, 1e-14)])
def test_kl_estimators_pinned(dtype: torch.dtype, atol: float) -> None:
    logp = torch.tensor([[math.log(0.5)]], dtype=dtype)
    ref = torch.tensor([[math.log(0.25)]], dtype=dtype)
    # r = log π_ref - log π = ln 0.25 - ln 0.5 = ln 0.5 = -0.6931471805599453
    # k1 = -r = ln 2 = 0.6931471805599453
    # k2 = r²/2 = (ln 2)²/2 = 0.2402265069591007
    # k3 = (e^r - 1) - r = (0.5 - 1) + ln 2 = 0.1931471805599453
    for fn, expected in [(kl_k1, 0.6931471805599453), (kl_k2, 0.2402265069591007), (kl_k3, 0.1931471805599453)]:
        torch.testing.assert_close(fn(logp, ref), torch.tensor([[expected]], dtype=dtype), rtol=0, atol=atol)
    assert abs(math.log(2) ** 2 / 2 - 0.2402265069591007) < 1e-15


def test_kl_penalty_dispatch() -> None:
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(2, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    for name, fn in KL_ESTIMATORS.items():
        assert torch.equal(kl_penalty(logp, ref, estimator=name), fn(logp, ref))
    assert torch.equal(kl_penalty(logp, ref), kl_k1(logp, ref))
    with pytest.raises(ValueError, match="k4.*k1"):
        kl_penalty(logp, ref, estimator="k4")


def test_kl_estimators_zero_at_equal_and_k2_k3_nonnegative() -> None:
    logp = torch.randn(3, 7, dtype=F64)
    for fn in (kl_k1, kl_k2, kl_k3):
        assert (fn(logp, logp) == 0).all()
    ref = torch.randn(3, 7, dtype=F64)
    assert (kl_k2(logp, ref) >= 0).all() and (kl_k3(logp, ref) >= 0).all()


# ---------------------------------------------------------------- masked utilities


def test_masked_mean() -> None:
    x = _row(1, 2, 3, float("nan"))
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    # (1 + 2 + 3) / 3 = 2, the NaN at the masked position is ignored
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0], dtype=F64))
    # nothing valid → 0, not NaN
    assert masked_mean(x, torch.zeros_like(mask)) == 0


def test_masked_whiten() -> None:
    x = _row(1, 2, 3, 100)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    # valid: mean = 2, unbiased var = ((−1)² + 0² + 1²) / (3 − 1) = 1 → [−1, 0, 1], padding 0
    torch.testing.assert_close(masked_whiten(x, mask), _row(-1, 0, 1, 0), rtol=0, atol=1e-7)
    # shift_mean=False adds the mean back: [1, 2, 3]
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), _row(1, 2, 3, 0), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- gradcheck


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    rewards, values = r(2, 4).requires_grad_(True), r(2, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: gae(a, b, mask, gamma=0.9, lam=0.8), (rewards, values))
    # log ratios well away from the clip edges (ln 0.8, ln 1.2), where the loss has kinks
    logps = torch.tensor([[0.05, -0.5, 0.6, 0.0], [-0.02, 0.4, 0.0, 0.0]], dtype=F64, requires_grad=True)
    old, adv = torch.zeros(2, 4, dtype=F64), r(2, 4)
    assert torch.autograd.gradcheck(lambda x: ppo_clip(x, old, adv, mask)[0], (logps,))
    v = torch.tensor([[1.05, 2.0, 0.5, 0.0], [0.9, -1.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    old_v, ret = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=F64), r(2, 4)
    assert torch.autograd.gradcheck(lambda x: value_clip(x, old_v, ret, mask), (v,))
    ref = r(2, 4).requires_grad_(True)
    for fn in (kl_k1, kl_k2, kl_k3):
        assert torch.autograd.gradcheck(fn, (logps, ref))
    assert torch.autograd.gradcheck(lambda x: masked_whiten(x, mask), (values,))
