"""Bradley-Terry ratings of several models from pairwise judgments, on the Elo scale (Chatbot Arena).

Model i has strength θ_i; a judgment between i and j is a Bernoulli draw with (Bradley & Terry, 1952)

    P(i beats j) = σ(θ_i − θ_j) = 1 / (1 + exp(−(θ_i − θ_j))).

Given games g = (a_g, b_g, y_g, w_g) with y_g ∈ [0, 1] the observed share of the game a_g won (1 a
win, 0 a loss, ½ a tie, or a judge's soft preference) and weight w_g, the maximum-likelihood θ
maximises (with an optional weak Gaussian prior λ that keeps an unbeaten model finite)

    ℓ(θ) = Σ_g w_g [y_g log σ(θ_a − θ_b) + (1 − y_g) log σ(θ_b − θ_a)] − (λ/2)·‖θ‖²,

a concave function solved by Newton's method (gradient Σ_g w_g (y_g − σ(d_g))(e_a − e_b) − λθ;
the Hessian's null space, a common shift of every θ, is removed with a pseudo-inverse). Like
Chatbot Arena (Chiang et al. 2024, https://arxiv.org/abs/2403.04132) the ratings are reported on
the Elo scale, R_i = anchor + (400 / ln 10)·(θ_i − θ_ref), so a 400-point gap means 10:1 odds and
P(i beats j) = 1 / (1 + 10^((R_j − R_i)/400)); θ_ref is the mean strength (or one anchored model).
Intervals come from a bootstrap over games.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from alignkit.api import bootstrap_interval

ELO_SCALE = 400.0 / math.log(10.0)
"""Elo points per unit of log-odds: 400 / ln 10 ≈ 173.72."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def _log_likelihood(theta: np.ndarray, a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray,
                    l2: float) -> float:
    d = theta[a] - theta[b]  # (G,)
    # log σ(d) = −log(1 + e^−d), computed with logaddexp for large |d|.
    return float(np.sum(w * (-y * np.logaddexp(0.0, -d) - (1 - y) * np.logaddexp(0.0, d))) - 0.5 * l2 * theta @ theta)


def bradley_terry_mle(first: Sequence[int], second: Sequence[int], outcome: Sequence[float], num_players: int, *,
                      weights: Sequence[float] | None = None, l2: float = 0.0, tol: float = 1e-10,
                      max_iter: int = 200) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry strengths θ (natural log-odds units, mean 0).

    Args:
        first: (G,) index of the first model of each game.
        second: (G,) index of the second model.
        outcome: (G,) y ∈ [0, 1]: 1 if the first won, 0 if it lost, 0.5 for a tie (soft values allowed).
        num_players: K.
        weights: (G,) game weights (default 1).
        l2: λ of the Gaussian prior −(λ/2)‖θ‖² (0: plain MLE, infinite for an unbeaten model).
        tol: stop when the Newton step's largest component is below this.
        max_iter: Newton iterations at most.

    Returns:
        (K,) θ with Σθ = 0 (models never compared stay at 0).
    """
    a = np.asarray(first, dtype=np.int64)  # (G,)
    b = np.asarray(second, dtype=np.int64)  # (G,)
    y = np.asarray(outcome, dtype=np.float64)  # (G,)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)  # (G,)
    if not (a.shape == b.shape == y.shape == w.shape):
        raise ValueError("first, second, outcome and weights must have the same length")
    if np.any((y < 0) | (y > 1)):
        raise ValueError("outcome values must lie in [0, 1]")
    if np.any(a == b):
        raise ValueError("a model cannot play itself")
    theta = np.zeros(num_players)  # (K,)
    current = _log_likelihood(theta, a, b, y, w, l2)
    for _ in range(max_iter):
        d = theta[a] - theta[b]  # (G,)
        p = _sigmoid(d)  # (G,)
        residual = w * (y - p)  # (G,)
        grad = np.bincount(a, residual, num_players) - np.bincount(b, residual, num_players) - l2 * theta  # (K,)
        curvature = w * p * (1 - p)  # (G,)
        hess = np.zeros((num_players, num_players))  # (K, K) negative Hessian
        np.add.at(hess, (a, a), curvature)
        np.add.at(hess, (b, b), curvature)
        np.add.at(hess, (a, b), -curvature)
        np.add.at(hess, (b, a), -curvature)
        hess += l2 * np.eye(num_players)
        step = np.linalg.pinv(hess, rcond=1e-12) @ grad  # (K,)
        scale = 1.0
        while scale > 1e-6:  # step halving keeps every iteration an ascent step
            candidate = theta + scale * step
            value = _log_likelihood(candidate, a, b, y, w, l2)
            if value >= current - 1e-12:
                break
            scale *= 0.5
        theta, current = candidate, value
        if np.max(np.abs(scale * step)) < tol:
            break
    return theta - theta.mean()


def elo_ratings(theta: np.ndarray, *, anchor: int | None = None, anchor_rating: float = 1000.0) -> np.ndarray:
    """Strengths on the Elo scale: R_i = anchor_rating + (400 / ln 10)·(θ_i − θ_ref).

    Args:
        theta: (K,) Bradley-Terry strengths.
        anchor: index of the model pinned at ``anchor_rating`` (None: the mean rating is pinned).
        anchor_rating: the rating of the anchor (Elo's customary 1000).
    """
    reference = float(np.mean(theta)) if anchor is None else float(theta[anchor])
    return anchor_rating + ELO_SCALE * (np.asarray(theta, dtype=np.float64) - reference)


@dataclass
class Rating:
    """One row of a ratings table."""

    model: str
    rating: float
    ci_low: float
    ci_high: float
    games: float
    score: float  # share of its games won (ties ½)


def rate(models: Sequence[str], first: Sequence[int], second: Sequence[int], outcome: Sequence[float], *,
         anchor: str | None = None, anchor_rating: float = 1000.0, l2: float = 1e-2, rounds: int = 1000,
         seed: int = 0, level: float = 0.95) -> list[Rating]:
    """Elo-scale Bradley-Terry ratings with percentile-bootstrap intervals over games, best first.

    Args:
        models: K model names (indices in ``first`` / ``second`` refer to them).
        first, second, outcome: the games (see :func:`bradley_terry_mle`).
        anchor: model pinned at ``anchor_rating`` (None: the mean rating is pinned).
        l2: weak prior on θ (natural units; 0.01 is a N(0, 10²) prior, i.e. ~1700 Elo of spread).
        rounds: bootstrap resamples of the games (0: no interval).
        seed: bootstrap seed.
        level: interval coverage.
    """
    k = len(models)
    a, b, y = np.asarray(first), np.asarray(second), np.asarray(outcome, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no games to rate")
    anchor_index = None if anchor is None else list(models).index(anchor)

    def fit(index: np.ndarray) -> np.ndarray:
        theta = bradley_terry_mle(a[index], b[index], y[index], k, l2=l2)
        return elo_ratings(theta, anchor=anchor_index, anchor_rating=anchor_rating)

    ratings = fit(np.arange(a.size))
    if rounds > 0:
        low, high = bootstrap_interval(fit, a.size, rounds=rounds, seed=seed, level=level)
    else:
        low = high = np.full(k, float("nan"))
    games = np.bincount(a, minlength=k) + np.bincount(b, minlength=k)
    won = np.bincount(a, y, minlength=k) + np.bincount(b, 1 - y, minlength=k)
    rows = [Rating(m, float(ratings[i]), float(low[i]), float(high[i]), float(games[i]),
                   float(won[i] / games[i]) if games[i] else float("nan")) for i, m in enumerate(models)]
    return sorted(rows, key=lambda r: -r.rating)
