"""The estimator and the loss, as pure functions on tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.rl import aggregate, masked_mean


def median_advantages(rewards: Tensor) -> Tensor:
    r"""Advantages against the group median: A_i = r_i − median_j r_j, over a prompt's k samples.

    A baseline robust to one outlying reward (a mean would move with it). For even k the median is the
    mean of the two middle values.

    Args:
        rewards: (P, k) rewards, k >= 2.

    Returns:
        (P, k) advantages.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"median_advantages: rewards must be (P, k) with k >= 2, got {tuple(rewards.shape)}")
    ordered = rewards.sort(dim=1).values  # (P, k)
    k = rewards.shape[1]
    median = (ordered[:, (k - 1) // 2] + ordered[:, k // 2]) / 2  # (P,)
    return rewards - median[:, None]  # (P, k)


@dataclass
class VanillaPGConfig:
    """``loss=vanilla_pg``: how its per-token losses are aggregated."""

    name: str = "vanilla_pg"
    aggregation: str = "token_mean"


def vanilla_pg(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
               aggregation: str = "token_mean", norm_length: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""The plain policy gradient: loss_t = −A · log π_θ(y_t), aggregated (Williams 1992, per token).

    On-policy only: ``old_logps`` is used for the diagnostics, not the loss (no importance ratio).

    Args:
        logps: (N, T) log-probs of the sampled tokens. old_logps: (N, T) at sampling time.
        advantages: (N,) per completion or (N, T). mask: (N, T) tokens that count.
        aggregation: an alignkit aggregation mode. norm_length: L of ``seq_mean_token_sum_norm``.

    Returns:
        (loss (), stats: ratio_mean, clip_frac (always 0), approx_kl).
    """
    adv = (advantages[:, None] if advantages.dim() == 1 else advantages).detach()  # (N, T) or (N, 1)
    losses = -adv * logps  # (N, T)
    with torch.no_grad():
        log_ratio = logps - old_logps
        stats = {"ratio_mean": masked_mean(torch.exp(log_ratio), mask), "clip_frac": torch.zeros(()),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask)}
    return aggregate(losses, mask, aggregation, norm_length), stats
