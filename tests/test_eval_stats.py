"""Pure statistics of ``alignkit eval``: Bradley-Terry / Elo, (length-controlled) win-rates, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.plugins.commands.evaluate.ratings import ELO_SCALE, bradley_terry_mle, elo_ratings, rate
from alignkit.plugins.commands.evaluate.winrate import (
    fit_length_logistic,
    length_controlled_win_rate,
    length_feature,
    win_rate_summary,
)
from alignkit.stats import bootstrap_interval, wilson_interval


def test_two_players_with_three_wins_in_four_are_400_log10_3_apart():
    theta = bradley_terry_mle([0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], 2)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-8)  # σ(Δ) = 3/4
    elo = elo_ratings(theta)
    assert elo[0] - elo[1] == pytest.approx(400 * math.log10(3), abs=1e-5)  # 190.8485
    assert elo.mean() == pytest.approx(1000.0, abs=1e-8)
    assert ELO_SCALE == pytest.approx(400 / math.log(10), abs=1e-12)


def test_ties_and_soft_outcomes_count_as_fractions_of_a_win():
    # Two ties and one win for A: A's share is 2/3, so σ(Δ) = 2/3 and Δ = ln 2.
    theta = bradley_terry_mle([0, 1, 0], [1, 0, 1], [0.5, 0.5, 1.0], 2)
    assert theta[0] - theta[1] == pytest.approx(math.log(2), abs=1e-8)
    soft = bradley_terry_mle([0], [1], [0.75], 2)
    assert soft[0] - soft[1] == pytest.approx(math.log(3), abs=1e-8)


def test_three_players_consistent_with_bradley_terry_are_recovered_exactly():
    # θ = (ln 3, 0, −ln 3): P(A>B) = P(B>C) = 3/4 and P(A>C) = σ(2 ln 3) = 9/10; the data match exactly.
    first = [0] * 4 + [1] * 4 + [0] * 10
    second = [1] * 4 + [2] * 4 + [2] * 10
    outcome = [1, 1, 1, 0] * 2 + [1] * 9 + [0]
    theta = bradley_terry_mle(first, second, outcome, 3)
    np.testing.assert_allclose(theta, [math.log(3), 0.0, -math.log(3)], atol=1e-8)
    elo = elo_ratings(theta, anchor=1, anchor_rating=1200.0)
    np.testing.assert_allclose(elo, [1200 + 400 * math.log10(3), 1200.0, 1200 - 400 * math.log10(3)], atol=1e-5)


def test_unbeaten_player_stays_finite_under_the_weak_prior():
    theta = bradley_terry_mle([0] * 5, [1] * 5, [1.0] * 5, 2, l2=1e-2)
    assert np.isfinite(theta).all() and theta[0] > 2
    # Stationarity of the penalised likelihood: 5·(1 − σ(Δ)) = λ·θ_A with θ_A = Δ/2.
    delta = theta[0] - theta[1]
    assert 5 * (1 - 1 / (1 + math.exp(-delta))) == pytest.approx(1e-2 * delta / 2, abs=1e-8)


def test_rate_orders_models_and_brackets_them_with_seeded_bootstrap_intervals():
    first = [0] * 4 + [1] * 4 + [0] * 10
    second = [1] * 4 + [2] * 4 + [2] * 10
    outcome = [1, 1, 1, 0] * 2 + [1] * 9 + [0]
    table = rate(["A", "B", "C"], first, second, outcome, l2=0.0, rounds=200, seed=3)
    assert [r.model for r in table] == ["A", "B", "C"]
    assert table[0].rating - table[1].rating == pytest.approx(400 * math.log10(3), abs=1e-5)
    for row in table:
        assert row.ci_low <= row.rating <= row.ci_high
    assert table[0].games == 14 and table[0].score == pytest.approx(12 / 14)
    again = rate(["A", "B", "C"], first, second, outcome, l2=0.0, rounds=200, seed=3)
    assert [r.ci_low for r in again] == [r.ci_low for r in table]  # same seed, same interval


def test_bradley_terry_rejects_bad_games():
    with pytest.raises(ValueError, match="itself"):
        bradley_terry_mle([0], [0], [1.0], 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bradley_terry_mle([0], [1], [2.0], 2)


def test_length_controlled_win_rate_of_two_length_groups_by_hand():
    # Longer answers (Δ = +5) win 4 of 5, shorter ones (Δ = −5) 1 of 2. z takes two opposite values
    # ±t, so the fit is saturated: β₀ ± β₁t = logit(0.8), logit(0.5) → β₀ = (ln 4 + 0)/2 = ln 2.
    y = [1, 1, 1, 1, 0, 1, 0]
    diff = [5, 5, 5, 5, 5, -5, -5]
    out = length_controlled_win_rate(y, diff, l2=0.0)
    assert out["intercept"] == pytest.approx(math.log(2), abs=1e-8)
    assert out["lc_win_rate"] == pytest.approx(2 / 3, abs=1e-8)
    z = length_feature(diff)
    t = math.tanh(5 / np.std(diff))
    assert z[0] == pytest.approx(t, abs=1e-12) and z[-1] == pytest.approx(-t, abs=1e-12)
    assert out["length_slope"] == pytest.approx(math.log(4) / (2 * t), abs=1e-6)


def test_length_controlled_win_rate_equals_the_win_rate_without_length_differences():
    y = [1, 0, 1, 1, 0.5]
    out = length_controlled_win_rate(y, [3, 3, 3, 3, 3])  # all Δ equal: z = 0
    assert out["lc_win_rate"] == pytest.approx(np.mean(y), abs=1e-10)
    flat = length_controlled_win_rate([0.5] * 6, [1, -4, 7, 2, -1, 0], l2=0.0)  # soft ties everywhere
    assert flat["lc_win_rate"] == pytest.approx(0.5, abs=1e-8) and flat["length_slope"] == pytest.approx(0.0, abs=1e-8)


def test_logistic_fit_matches_its_score_equations():
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, 40)
    y = (rng.uniform(size=40) < 1 / (1 + np.exp(-(0.3 + 1.2 * z)))).astype(float)
    b0, b1 = fit_length_logistic(y, z)
    p = 1 / (1 + np.exp(-(b0 + b1 * z)))
    assert abs(np.sum(y - p)) < 1e-8 and abs(np.sum((y - p) * z)) < 1e-8


def test_win_rate_summary_uses_wilson_for_hard_judgments_with_ties_as_halves():
    y = [1, 1, 0.5, 0, 1, 0.5, 1, 0]
    out = win_rate_summary(y, [10, 5, 0, -3, 8, 1, 2, -6], rounds=100, seed=0)
    assert out["win_rate"] == pytest.approx(5 / 8)
    low, high = wilson_interval(5.0, 8)
    assert out["win_rate_ci_low"] == pytest.approx(low) and out["win_rate_ci_high"] == pytest.approx(high)
    assert (out["wins"], out["ties"], out["losses"], out["interval"]) == (4, 2, 2, "wilson")
    assert out["lc_win_rate_ci_low"] <= out["lc_win_rate"] <= out["lc_win_rate_ci_high"]
    soft = win_rate_summary([0.9, 0.2, 0.7, 0.6], None)
    assert soft["interval"] == "normal" and soft["win_rate"] == pytest.approx(0.6)
    half = 1.959963984540054 * np.std([0.9, 0.2, 0.7, 0.6], ddof=1) / 2
    assert soft["win_rate_ci_high"] - soft["win_rate"] == pytest.approx(half, abs=1e-10)


def test_bootstrap_interval_is_seeded_and_covers_the_statistic():
    data = np.arange(10, dtype=float)
    low, high = bootstrap_interval(lambda idx: data[idx].mean(), 10, rounds=500, seed=1)
    assert low < 4.5 < high
    again = bootstrap_interval(lambda idx: data[idx].mean(), 10, rounds=500, seed=1)
    assert (low, high) == again
    constant = bootstrap_interval(lambda idx: np.ones(3), 4, rounds=10)
    np.testing.assert_allclose(constant[0], 1.0) and np.testing.assert_allclose(constant[1], 1.0)
