"""Small statistics for held-out metrics: intervals that say how much a number can be trusted."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson, 1927); well-behaved near 0 and 1 and for small n.

    center = (p̂ + z²/2n) / (1 + z²/n),  half-width = z·sqrt(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n).
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (center - half, center + half)


def mean_interval(values: torch.Tensor, z: float = Z95) -> tuple[float, float, float]:
    """Mean and normal-approximation 95% interval of the mean: x̄ ± z·s/sqrt(n) (s: sample std)."""
    values = values.double().reshape(-1)  # (n,)
    n = values.numel()
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan")
    half = z * float(values.std(unbiased=True)) / math.sqrt(n)
    return mean, mean - half, mean + half


def preference_summary(correct: torch.Tensor, margin: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Accuracy (ties count one half) with its Wilson interval, mean margin with its interval, and n."""
    n = correct.numel()
    successes = float(correct.double().sum())
    low, high = wilson_interval(successes, n)
    mean, m_low, m_high = mean_interval(margin)
    return {f"{prefix}accuracy": successes / max(n, 1), f"{prefix}accuracy_ci_low": low,
            f"{prefix}accuracy_ci_high": high, f"{prefix}margin": mean, f"{prefix}margin_ci_low": m_low,
            f"{prefix}margin_ci_high": m_high, f"{prefix}pairs": float(n)}


#: Relative width of a tie: 32 float32 epsilons of the operands' magnitude (see :func:`preference_correct`).
TIE_RTOL = 32 * float(torch.finfo(torch.float32).eps)


def tie_scale(*operands: torch.Tensor) -> torch.Tensor:
    """Σ |operand|, elementwise: the magnitude a margin built from ``operands`` inherits rounding from.

    In general pass every value the margin adds or subtracts, as it enters the margin (scaled by its
    coefficient): for a reward model's margin r_c − r_r pass ``(r_c, r_r)``; for DPO's
    β(log π_c − log π_ref,c) − β(log π_r − log π_ref,r) the four β-scaled log-prob sums; for a margin of
    mean log-probs ℓ_c − ℓ_r (ORPO, SimPO) ``(ℓ_c, ℓ_r)``. Each operand has the margin's shape (...)
    or broadcasts to it.
    """
    total = operands[0].detach().abs()
    for operand in operands[1:]:
        total = total + operand.detach().abs()
    return total


def preference_correct(margin: torch.Tensor, scale: torch.Tensor | None = None, *,
                       rtol: float = TIE_RTOL) -> torch.Tensor:
    """1 where the chosen answer wins, 0 where it loses, 1/2 on a tie.

    Tie rule: ``|margin| <= rtol · scale``. A float32 sum of n terms carries rounding of about
    √n·eps·Σ|terms| (Higham, "Accuracy and Stability of Numerical Algorithms", §4.2), so a margin below
    a few tens of epsilons of its operands' magnitude (``scale``, see :func:`tie_scale`) is rounding
    noise, e.g. the same answer scored in two batch rows, not a preference: counting it as a win
    or a loss would make accuracy read 0.625 on pairs that are identical. The default ``rtol`` is
    32 eps (√n for sequences up to ~1000 tokens). Without ``scale`` only exact zeros are ties.

    Args:
        margin: (...) chosen minus rejected score.
        scale: (...) or broadcastable magnitude of the values the margin is the difference of; None
            for exact ties only.
        rtol: tie width relative to ``scale``.

    Returns:
        (...) float32 in {0, 1/2, 1}.
    """
    margin = margin.detach()
    tol = torch.zeros_like(margin) if scale is None else rtol * scale.detach().to(margin.dtype)  # (...)
    tie = margin.abs() <= tol
    return torch.where(tie, 0.5, (margin > 0).to(margin.dtype)).float()


def bootstrap_interval(statistic: Callable[[np.ndarray], Any], n: int, *, rounds: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (Efron, 1979) of a statistic of n items resampled with replacement.

    Each round draws indices i_1..i_n uniformly from 0..n−1 (a seeded ``numpy`` generator, so the
    interval is reproducible) and evaluates ``statistic(indices)``; the interval is the
    ((1−level)/2, (1+level)/2) quantiles of the R values, per output element.

    Args:
        statistic: maps an (n,) index array to a float or an array (e.g. all players' ratings).
        n: number of items (games, prompts).
        rounds: R resamples.
        seed: seed of the resampling generator.
        level: coverage of the interval.

    Returns:
        (low, high), each shaped like the statistic's output.
    """
    if n < 1 or rounds < 1:
        raise ValueError(f"bootstrap needs n >= 1 and rounds >= 1 (got n={n}, rounds={rounds})")
    generator = np.random.default_rng(seed)
    values = np.stack([np.asarray(statistic(generator.integers(0, n, size=n)), dtype=np.float64)
                       for _ in range(rounds)])  # (R, ...)
    alpha = (1.0 - level) / 2.0
    return np.quantile(values, alpha, axis=0), np.quantile(values, 1.0 - alpha, axis=0)
