"""Win-rate of a policy against a baseline, and its length-controlled variant (AlpacaEval 2 LC).

A judgment y_i ∈ [0, 1] per prompt says how much the policy's answer is preferred to the
baseline's: 1 a win, 0 a loss, ½ a tie, or a judge's soft preference. The win-rate is their mean,
with a Wilson interval when every y_i is 0, ½ or 1 (ties count as half a success) and a normal
interval of the mean otherwise.

Judges favour longer answers, so a policy can "win" by talking more. The length-controlled win-rate
(Dubois et al. 2024, https://arxiv.org/abs/2404.04475, AlpacaEval 2 LC) fits a logistic regression
of the judgment on the length difference and reports the win-rate it predicts when the two answers
are equally long. With Δ_i = len(policy_i) − len(baseline_i) (characters, as AlpacaEval) and
s the standard deviation of Δ over the prompts::

    z_i = tanh(Δ_i / s)                                    (bounded, scale-free length feature)
    P(policy preferred | z) = σ(β₀ + β₁·z)
    β = argmax Σ_i y_i log σ(β₀ + β₁ z_i) + (1 − y_i) log σ(−β₀ − β₁ z_i) − (λ/2)·β₁²
    LC win-rate = σ(β₀)                                    (the prediction at z = 0: equal lengths)

(AlpacaEval's full GLM also has a per-instruction difficulty term, which needs many models judged
on the same prompts; with one policy and one baseline it drops out.) When every Δ_i is equal,
z = 0 and LC = the plain win-rate. The weak ridge λ on β₁ only keeps the slope finite when the
judgments are perfectly separated by length. Its interval is a percentile bootstrap over prompts.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignkit.api import bootstrap_interval, mean_interval, wilson_interval


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def length_feature(length_diff: Sequence[float]) -> np.ndarray:
    """(n,) z_i = tanh(Δ_i / s), s = population std of Δ; zeros when every Δ_i is the same."""
    diff = np.asarray(length_diff, dtype=np.float64)  # (n,)
    scale = float(diff.std())
    if scale == 0.0:
        return np.zeros_like(diff)
    return np.tanh(diff / scale)


def fit_length_logistic(preference: Sequence[float], feature: Sequence[float], *, l2: float = 0.0,
                        tol: float = 1e-12, max_iter: int = 100) -> tuple[float, float]:
    """(β₀, β₁) maximising Σ y log σ(β₀ + β₁ z) + (1 − y) log σ(−β₀ − β₁ z) − (λ/2)β₁² (Newton).

    Args:
        preference: (n,) y ∈ [0, 1] (soft labels allowed).
        feature: (n,) z.
        l2: λ, a ridge on the slope only (the intercept is the quantity reported).
    """
    y = np.asarray(preference, dtype=np.float64)  # (n,)
    z = np.asarray(feature, dtype=np.float64)  # (n,)
    x = np.stack([np.ones_like(z), z], axis=1)  # (n, 2)
    penalty = np.diag([0.0, l2])  # (2, 2)
    beta = np.zeros(2)
    if not np.any(z != 0):  # intercept only: the MLE is logit(ȳ) in closed form
        mean = float(np.clip(y.mean(), 1e-12, 1 - 1e-12))
        return float(np.log(mean / (1 - mean))), 0.0
    for _ in range(max_iter):
        p = _sigmoid(x @ beta)  # (n,)
        grad = x.T @ (y - p) - penalty @ beta  # (2,)
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-12 * np.eye(2)  # (2, 2) negative Hessian
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < tol or np.max(np.abs(beta)) > 50:  # > 50: separated data, σ saturated
            break
    return float(beta[0]), float(beta[1])


def length_controlled_win_rate(preference: Sequence[float], length_diff: Sequence[float], *,
                               l2: float = 1e-2) -> dict[str, float]:
    """LC win-rate σ(β₀) and the fitted coefficients (see the module docstring for the model).

    Args:
        preference: (n,) judgments y ∈ [0, 1] of the policy over the baseline.
        length_diff: (n,) len(policy answer) − len(baseline answer).
        l2: ridge λ on the length slope β₁.

    Returns:
        ``lc_win_rate`` σ(β₀), ``intercept`` β₀, ``length_slope`` β₁, ``length_scale`` s.
    """
    z = length_feature(length_diff)
    beta0, beta1 = fit_length_logistic(preference, z, l2=l2)
    return {"lc_win_rate": float(_sigmoid(np.asarray(beta0))), "intercept": beta0, "length_slope": beta1,
            "length_scale": float(np.asarray(length_diff, dtype=np.float64).std())}


def win_rate_summary(preference: Sequence[float], length_diff: Sequence[float] | None = None, *,
                     rounds: int = 1000, seed: int = 0, l2: float = 1e-2) -> dict[str, Any]:
    """Win-rate with its 95% interval, wins / ties / losses, and (given lengths) the LC win-rate.

    The win-rate's interval is Wilson's when every judgment is 0, ½ or 1 (ties are half a success),
    else the normal interval of the mean. The LC win-rate's is a percentile bootstrap over prompts
    (``rounds`` resamples, ``seed``).
    """
    y = np.asarray(preference, dtype=np.float64)  # (n,)
    n = y.size
    if n == 0:
        raise ValueError("no judgments")
    hard = bool(np.all(np.isin(y, (0.0, 0.5, 1.0))))
    if hard:
        low, high = wilson_interval(float(y.sum()), n)
    else:
        import torch

        _, low, high = mean_interval(torch.from_numpy(y))
    out = {"win_rate": float(y.mean()), "win_rate_ci_low": low, "win_rate_ci_high": high,
           "wins": float(np.sum(y > 0.5)), "ties": float(np.sum(y == 0.5)), "losses": float(np.sum(y < 0.5)),
           "n": float(n), "interval": "wilson" if hard else "normal"}
    if length_diff is not None:
        diff = np.asarray(length_diff, dtype=np.float64)  # (n,)
        out.update(length_controlled_win_rate(y, diff, l2=l2))
        out["mean_length_diff"] = float(diff.mean())
        if rounds > 0:
            lc_low, lc_high = bootstrap_interval(
                lambda idx: length_controlled_win_rate(y[idx], diff[idx], l2=l2)["lc_win_rate"], n,
                rounds=rounds, seed=seed)
            out["lc_win_rate_ci_low"], out["lc_win_rate_ci_high"] = float(lc_low), float(lc_high)
    return out
