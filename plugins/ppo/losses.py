"""Pure loss math for PPO on token sequences: the clipped policy and value losses.

GAE, whitening and the KL estimators are shared by every online method: :mod:`alignkit.rl`.

Per-token tensors are (B, T) with a (B, T) mask that is True (or 1) on valid response tokens and
False on prompt and padding. Sequences are right-padded: the first masked position after a valid
token ends that sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.rl import masked_mean

__all__ = ["ppo_clip", "ppo_clip_per_token", "value_clip"]


def ppo_clip_per_token(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
) -> Tensor:
    r"""PPO clipped surrogate loss per token, −min(ρA, clip(ρ, 1−ε, 1+ε)A), 0 at masked positions.

    Paper: "Proximal Policy Optimization Algorithms", Schulman, Wolski, Dhariwal, Radford &
    Klimov, 2017, https://arxiv.org/abs/1707.06347 (eq. 7).

    Formula, with ρ_t = exp(log π(a_t) − log π_old(a_t)) and ε = clip::

        loss_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)

    `old_logps` and `advantages` are detached: they are constants of the surrogate, and a gradient
    through them would optimise the wrong objective.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the current policy.
        old_logps: (B, T) log-probs under the policy that generated the samples.
        advantages: (B, T) advantage estimates (e.g. from `gae`, optionally `masked_whiten`-ed).
        mask: (B, T) bool or 0/1, True on valid tokens.
        clip: clipping range ε.

    Returns:
        (B, T) per-token losses.
    """
    advantages = advantages.detach()  # (B, T)
    ratio = torch.exp(logps - old_logps.detach())  # (B, T)
    unclipped = -ratio * advantages  # (B, T)
    clipped = -torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages  # (B, T)
    # max of the negated terms == −min of the surrogates: the pessimistic bound.
    return torch.where(mask.bool(), torch.maximum(unclipped, clipped), logps.new_zeros(()))  # (B, T)


def ppo_clip(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""PPO clipped surrogate loss, masked mean over valid tokens, with clip-fraction/KL/ratio stats.

    Paper: "Proximal Policy Optimization Algorithms", Schulman et al., 2017,
    https://arxiv.org/abs/1707.06347.

    Formula: mean over valid tokens of `ppo_clip_per_token` (see there). Stats (detached scalars):

        clip_frac  = fraction of valid tokens where the clipped term is the active one (zero gradient)
        approx_kl  = mean of (ρ − 1) − log ρ  (the k3 estimator of KL(π_old ‖ π))
        ratio_mean = mean of ρ

    Args:
        logps: (B, T) log-probs under the current policy.
        old_logps: (B, T) log-probs under the sampling policy.
        advantages: (B, T) advantages.
        mask: (B, T) bool or 0/1, True on valid tokens.
        clip: clipping range ε.

    Returns:
        (loss () scalar, stats dict with keys "clip_frac", "approx_kl", "ratio_mean").
    """
    per_token = ppo_clip_per_token(logps, old_logps, advantages, mask, clip=clip)  # (B, T)
    loss = masked_mean(per_token, mask)  # ()
    with torch.no_grad():
        log_ratio = logps - old_logps  # (B, T)
        ratio = torch.exp(log_ratio)  # (B, T)
        clipped_active = (-torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages) > (
            -ratio * advantages
        )  # (B, T)
        stats = {
            "clip_frac": masked_mean(clipped_active.to(logps.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_clip(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
) -> Tensor:
    r"""Clipped value loss 0.5·max((V − R)², (clip(V, V_old ± ε) − R)²), masked mean over valid tokens.

    From the PPO reference implementation (OpenAI baselines `ppo2`); discussed in "Implementation
    Matters in Deep Policy Gradients", Engstrom et al., 2020, https://arxiv.org/abs/2005.12729.

    Formula, with ε = clip::

        V_clipped = V_old + clip(V − V_old, −ε, ε)
        loss = masked_mean( 0.5 · max((V − R)², (V_clipped − R)²) )

    `old_values` and `returns` are detached (targets, not parameters).

    Args:
        values: (B, T) current value predictions.
        old_values: (B, T) value predictions at sampling time.
        returns: (B, T) return targets (e.g. from `gae`).
        mask: (B, T) bool or 0/1, True on valid tokens.
        clip: clipping range ε, in the units of the values.

    Returns:
        () scalar loss.
    """
    old_values = old_values.detach()  # (B, T)
    returns = returns.detach()  # (B, T)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (B, T)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # (B, T)
    return masked_mean(per_token, mask)


