"""Pinned values of the GRPO family's policy losses, aggregation modes and advantage estimators, computed
by hand (the arithmetic is written out in each test), plus their invariants."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.plugins.grpo.losses import cispo, dapo, dr_grpo, grpo, gspo
from alignkit.rl import aggregate, aggregation_units, batch_normalized_advantages, group_normalized_advantages

F64 = torch.float64
# Two completions: row 0 has two counted tokens with ratios 1.5 and 0.5, row 1 one token with ratio 1.1.
LOGPS = torch.tensor([[math.log(1.5), math.log(0.5), 0.0], [math.log(1.1), 0.0, 0.0]], dtype=F64)
OLD = torch.zeros(2, 3, dtype=F64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
ADV = torch.tensor([1.0, -2.0], dtype=F64)


def test_grpo_clipped_surrogate_and_every_aggregation_by_hand():
    # row 0, t0: ρ=1.5, A=1: max(−1.5, −clip(1.5, 0.8, 1.2)) = −1.2 (clipped); t1: ρ=0.5: max(−0.5, −0.8) = −0.5
    # row 1, t0: ρ=1.1, A=−2: max(2.2, 2.2) = 2.2
    per_token = [-1.2, -0.5, 2.2]
    expected = {"seq_mean_token_mean": ((-1.2 - 0.5) / 2 + 2.2) / 2,  # 0.675
                "token_mean": sum(per_token) / 3,  # 0.1667
                "seq_mean_token_sum": (-1.7 + 2.2) / 2,  # 0.25
                "seq_mean_token_sum_norm": (-1.7 + 2.2) / (2 * 4)}  # L = 4
    for aggregation, value in expected.items():
        loss, stats = grpo(LOGPS, OLD, ADV, MASK, aggregation=aggregation, norm_length=4)
        assert loss.item() == pytest.approx(value, abs=1e-12), aggregation
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)


def test_dapo_clips_higher_and_averages_tokens():
    # ε_high 0.28: row 0 t0 → −clip(1.5, 0.8, 1.28) = −1.28; token mean over the 3 counted tokens
    loss, _ = dapo(LOGPS, OLD, ADV, MASK)
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 2.2) / 3, abs=1e-12)


def test_dr_grpo_needs_and_uses_the_constant_length():
    loss, _ = dr_grpo(LOGPS, OLD, ADV, MASK, norm_length=10)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / (2 * 10), abs=1e-12)
    with pytest.raises(ValueError, match="norm_length"):
        dr_grpo(LOGPS, OLD, ADV, MASK)


def test_gspo_uses_one_length_normalised_ratio_per_completion():
    s0 = math.exp((math.log(1.5) + math.log(0.5)) / 2)  # sqrt(0.75) = 0.866, below the range [1 − 3e-4, 1 + 4e-4]
    loss0 = max(-s0 * 1.0, -min(max(s0, 1 - 3e-4), 1 + 4e-4) * 1.0)  # = −0.866 (the unclipped term is larger)
    loss1 = max(-1.1 * -2.0, -min(max(1.1, 1 - 3e-4), 1 + 4e-4) * -2.0)  # = 2.2
    loss, stats = gspo(LOGPS, OLD, ADV, MASK)
    assert loss.item() == pytest.approx((loss0 + loss1) / 2, abs=1e-12)
    # The gradient flows through the sequence ratio: d/d logp_t of −s_0 A_0 / 2 = −s_0 · A_0 / (2 · |y_0|)
    logps = LOGPS.clone().requires_grad_(True)
    gspo(logps, OLD, ADV, MASK)[0].backward()
    assert logps.grad[0, 0].item() == pytest.approx(-s0 / 4, abs=1e-12)  # and the same for its token 1
    assert logps.grad[0, 1].item() == pytest.approx(-s0 / 4, abs=1e-12)
    assert logps.grad[1, 0].item() == pytest.approx(-1.1 * -2.0 / 2, abs=1e-12)  # the unclipped term is active


def test_cispo_weights_a_reinforce_term_with_the_clipped_detached_ratio():
    # weights: clip(ρ, 0, 1.28) → 1.28, 0.5, 1.1; loss_t = −w · A · logp
    terms = [-1.28 * 1.0 * math.log(1.5), -0.5 * 1.0 * math.log(0.5), -1.1 * -2.0 * math.log(1.1)]
    logps = LOGPS.clone().requires_grad_(True)
    loss, stats = cispo(logps, OLD, ADV, MASK)
    assert loss.item() == pytest.approx(sum(terms) / 3, abs=1e-12)
    loss.backward()
    expected_grad = torch.tensor([[-1.28 / 3, -0.5 / 3, 0.0], [2.2 / 3, 0.0, 0.0]], dtype=F64)  # −w·A / 3
    torch.testing.assert_close(logps.grad, expected_grad, atol=1e-12, rtol=0)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)  # the 1.5 ratio is capped


@pytest.mark.parametrize("loss_fn", [grpo, dapo, dr_grpo, gspo, cispo])
def test_first_update_ratio_is_exactly_one(loss_fn):
    logps = torch.randn(3, 5).clamp(max=-0.1)
    mask = torch.rand(3, 5) > 0.3
    _, stats = loss_fn(logps, logps.detach(), torch.randn(3), mask, norm_length=5)
    assert stats["ratio_mean"].item() == 1.0 and stats["clip_frac"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_aggregation_units_and_a_masked_out_completion():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)  # row 1: a truncated, masked completion
    assert aggregation_units(mask, "token_mean") == 3.0
    assert aggregation_units(mask, "seq_mean_token_mean") == 2.0  # only completions with a counted token
    losses = torch.tensor([[1.0, 3.0, 9.0], [5.0, 5.0, 5.0], [4.0, 9.0, 9.0]])
    assert aggregate(losses, mask, "seq_mean_token_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(losses, mask, "token_mean").item() == pytest.approx(8.0 / 3)
    with pytest.raises(ValueError, match="aggregation 'nope'"):
        aggregate(losses, mask, "nope")


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                         "seq_mean_token_sum_norm"])
def test_unit_weighted_means_of_parts_equal_the_whole(aggregation):
    """What the loop does with weight(): the units-weighted mean of each part's loss is the whole's loss."""
    torch.manual_seed(0)
    losses = torch.randn(6, 7, dtype=F64)
    mask = torch.rand(6, 7) > 0.4
    whole = aggregate(losses, mask, aggregation, norm_length=7)
    parts = [slice(0, 2), slice(2, 6)]
    units = [aggregation_units(mask[p], aggregation) for p in parts]
    combined = sum(u * aggregate(losses[p], mask[p], aggregation, norm_length=7) for p, u in zip(parts, units))
    assert (combined / sum(units)).item() == pytest.approx(whole.item(), abs=1e-12)


def test_group_norm_with_and_without_the_std_and_reinforce_pp():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    std = math.sqrt(((0.5 ** 2) * 4) / 3)  # Bessel-corrected std of [1, 0, 0, 1]
    expected = torch.tensor([[0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6)],
                             [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(group_normalized_advantages(rewards), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(group_normalized_advantages(rewards, scale_by_std=False),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=F64))
    mean, batch_std = 6 / 8, math.sqrt(sum((r - 0.75) ** 2 for r in [1, 0, 0, 1, 1, 1, 1, 1]) / 7)
    torch.testing.assert_close(batch_normalized_advantages(rewards), (rewards - mean) / (batch_std + 1e-6))
