"""Pure loss math for PPO on token sequences: GAE, clipped policy and value losses, KL estimators.

Per-token tensors are (B, T) with a (B, T) mask that is True (or 1) on valid response tokens and
False on prompt and padding. Sequences are right-padded: the first masked position after a valid
token ends that sequence.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "KL_ESTIMATORS",
    "gae",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "masked_mean",
    "masked_whiten",
    "ppo_clip",
    "ppo_clip_per_token",
    "value_clip",
]


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of x over the positions where mask is True; 0 where nothing is valid.

    Formula: Σ M·x / max(1, Σ M), over `dim` (all dimensions when None).

    Args:
        x: (B, T) values (any shape).
        mask: (B, T) bool or 0/1, broadcastable to x.
        dim: dimension(s) to reduce; None reduces everything to a scalar.

    Returns:
        The masked mean: a scalar when dim is None, else x's shape without `dim`.
    """
    x, mask = torch.broadcast_tensors(x, mask.bool())  # (B, T)
    # where() rather than x * mask: a NaN or inf at a padded position must not poison the mean.
    total = torch.where(mask, x, x.new_zeros(())).sum(dim=dim)
    count = mask.sum(dim=dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, *, eps: float = 1e-8) -> Tensor:
    """Normalise x to zero mean and unit variance over valid tokens only (advantage whitening).

    Statistics are computed over every valid token of the batch, as in the PPO implementations of
    "Fine-Tuning Language Models from Human Preferences", Ziegler et al., 2019,
    https://arxiv.org/abs/1909.08593, and TRL. The variance is unbiased (Bessel-corrected) when
    more than one token is valid.

    Formula::

        μ = masked_mean(x),  σ² = Σ M (x − μ)² / (Σ M − 1)
        out = (x − μ) / sqrt(σ² + eps)      (+ μ when shift_mean is False)

    Args:
        x: (B, T) values, typically advantages.
        mask: (B, T) bool or 0/1.
        shift_mean: if False, the mean is added back (only the scale changes), as for rewards.
        eps: added to the variance for numerical stability.

    Returns:
        (B, T) whitened values, 0 at masked positions.
    """
    mask = mask.bool()  # (B, T)
    mean = masked_mean(x, mask)  # ()
    centered = torch.where(mask, x - mean, x.new_zeros(()))  # (B, T)
    n = mask.sum()
    var = (centered**2).sum() / (n - 1).clamp(min=1).to(x.dtype)  # ()
    whitened = centered * torch.rsqrt(var + eps)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean  # (B, T)
    return torch.where(mask, whitened, x.new_zeros(()))  # (B, T)


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    r"""Generalized Advantage Estimation: per-token advantages and returns for right-padded sequences.

    Paper: "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    Schulman, Moritz, Levine, Jordan & Abbeel, 2016, https://arxiv.org/abs/1506.02438.

    Formula, for each valid token t (V_{t+1} = 0 and A_{t+1} = 0 when t is the last valid token)::

        δ_t = r_t + γ V_{t+1} − V_t
        A_t = δ_t + γ λ A_{t+1}
        returns_t = A_t + V_t

    λ = 0 gives the one-step TD error, λ = 1 the Monte-Carlo return minus V_t. The loop runs over T
    (a recurrence), vectorised over B. Usually called under `torch.no_grad()` with detached values.

    Args:
        rewards: (B, T) per-token rewards (e.g. the scorer's reward on the last token minus a KL
            penalty on every token).
        values: (B, T) value estimates V_t.
        mask: (B, T) bool or 0/1, True on valid tokens; right padding (a masked position ends the
            sequence, so nothing is bootstrapped across it).
        gamma: discount γ.
        lam: GAE λ.

    Returns:
        (advantages (B, T), returns (B, T)), both 0 at masked positions.
    """
    valid = mask.to(values.dtype)  # (B, T)
    rewards = rewards * valid  # (B, T)
    values = values * valid  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    advantages = []
    for t in reversed(range(values.shape[1])):
        # next_value / next_adv are already 0 past the end of each sequence, since they come from a
        # masked (zeroed) position; the trailing valid[:, t] zeroes the padding itself.
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_adv = (delta + gamma * lam * next_adv) * valid[:, t]  # (B,)
        next_value = values[:, t]  # (B,)
        advantages.append(next_adv)
    adv = torch.stack(advantages[::-1], dim=1)  # (B, T)
    returns = (adv + values) * valid  # (B, T)
    return adv, returns


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


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    r"""k1 KL estimator per token: log π − log π_ref (unbiased, high variance, can be negative).

    Reference: "Approximating KL Divergence", Schulman, 2020, http://joschu.net/blog/kl-approx.html.
    With samples from π and log-ratio r = log π_ref − log π, KL(π ‖ π_ref) ≈ k1 = −r.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.

    Returns:
        (B, T) per-token estimates.
    """
    return logps - ref_logps  # (B, T)


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    r"""k2 KL estimator per token: (log π_ref − log π)² / 2 (biased, low variance, non-negative).

    Reference: Schulman, 2020, http://joschu.net/blog/kl-approx.html. With r = log π_ref − log π,
    k2 = r² / 2.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.

    Returns:
        (B, T) per-token estimates.
    """
    log_ratio = ref_logps - logps  # (B, T)
    return 0.5 * log_ratio**2  # (B, T)


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    r"""k3 KL estimator per token: (e^r − 1) − r with r = log π_ref − log π (unbiased, low variance, ≥ 0).

    Reference: Schulman, 2020, http://joschu.net/blog/kl-approx.html. k3 = (e^r − 1) − r; used
    e.g. as the KL penalty of GRPO (Shao et al., 2024, https://arxiv.org/abs/2402.03300).

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.

    Returns:
        (B, T) per-token estimates.
    """
    log_ratio = ref_logps - logps  # (B, T)
    # expm1 keeps precision when the policy is close to the reference (r ≈ 0).
    return torch.expm1(log_ratio) - log_ratio  # (B, T)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logps: Tensor, ref_logps: Tensor, *, estimator: str = "k1") -> Tensor:
    r"""Per-token KL(π ‖ π_ref) estimate with the named estimator ("k1", "k2" or "k3").

    Reference: Schulman, 2020, http://joschu.net/blog/kl-approx.html; see `kl_k1`, `kl_k2`,
    `kl_k3`. The estimators live in `KL_ESTIMATORS`.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.
        estimator: key of `KL_ESTIMATORS`.

    Returns:
        (B, T) per-token estimates.

    Raises:
        ValueError: for an unknown estimator name.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(
            f"kl_penalty: unknown estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}"
        ) from None
    return fn(logps, ref_logps)
