"""Advantage estimators for policy gradients on sampled completions: GAE, leave-one-out, group-normalised,
moving-average baseline.

Group tensors are (P, k): P prompts, k sampled completions per prompt, one scalar reward each.
Per-token tensors are (B, T) with a (B, T) mask of valid response tokens (right padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_normalized_advantages", "gae", "group_normalized_advantages", "moving_average_baseline", "no_baseline",
           "rloo_advantages"]


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


def _check_group(name: str, rewards: Tensor) -> None:
    if rewards.dim() < 1 or rewards.shape[-1] < 2:
        raise ValueError(
            f"{name}: rewards must be (num_prompts, k) with k >= 2 samples per prompt (the baseline "
            f"of each sample is built from the others); got shape {tuple(rewards.shape)}. "
            "Sample at least 2 completions per prompt."
        )


def rloo_advantages(rewards: Tensor) -> Tensor:
    r"""REINFORCE Leave-One-Out advantages: each sample's reward minus the mean of the other k − 1.

    Papers: "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs", Ahmadian, Cremer, Gallé, Fadaee, Kreutzer, Pietquin, Üstün & Hooker, 2024,
    https://arxiv.org/abs/2402.14740; "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
    Kool, van Hoof & Welling, 2019, https://openreview.net/forum?id=r1lgTGL5DE.

    Formula, per prompt with k samples::

        A_i = r_i − 1/(k − 1) Σ_{j≠i} r_j  =  k/(k − 1) · (r_i − mean(r))

    The baseline does not depend on sample i, so the gradient stays unbiased; the advantages of a
    prompt sum to zero.

    Args:
        rewards: (P, k) rewards, k ≥ 2 samples per prompt.

    Returns:
        (P, k) advantages.

    Raises:
        ValueError: if k < 2.
    """
    _check_group("rloo_advantages", rewards)
    k = rewards.shape[-1]
    total = rewards.sum(dim=-1, keepdim=True)  # (P, 1)
    return rewards - (total - rewards) / (k - 1)  # (P, k)


def group_normalized_advantages(
    rewards: Tensor, *, eps: float = 1e-6, scale_by_std: bool = True
) -> Tensor:
    r"""GRPO group-normalised advantages: (r − mean) / (std + eps) over each prompt's k samples.

    Paper: "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"
    (GRPO, outcome supervision), Shao et al., 2024, https://arxiv.org/abs/2402.03300.
    `scale_by_std=False` gives the unscaled variant of "Understanding R1-Zero-Like Training: A
    Critical Perspective" (Dr. GRPO), Liu et al., 2025, https://arxiv.org/abs/2503.20783.

    Formula, per prompt (std is the Bessel-corrected sample standard deviation, as in the
    reference implementations)::

        A_i = (r_i − mean(r)) / (std(r) + eps)

    A prompt whose samples all got the same reward yields zero advantages (not NaN).

    Args:
        rewards: (P, k) rewards, k ≥ 2 samples per prompt.
        eps: added to the standard deviation.
        scale_by_std: divide by std + eps (GRPO) or only subtract the mean (Dr. GRPO).

    Returns:
        (P, k) advantages.

    Raises:
        ValueError: if k < 2.
    """
    _check_group("group_normalized_advantages", rewards)
    centered = rewards - rewards.mean(dim=-1, keepdim=True)  # (P, k)
    if not scale_by_std:
        return centered
    std = rewards.std(dim=-1, keepdim=True)  # (P, 1)
    return centered / (std + eps)  # (P, k)


def moving_average_baseline(
    baseline: Tensor | float, rewards: Tensor, *, decay: float = 0.9
) -> Tensor:
    r"""Update an exponential-moving-average reward baseline: decay·b + (1 − decay)·mean(r).

    The classic REINFORCE baseline ("Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning", Williams, 1992); used as the "REINFORCE w/ baseline"
    comparison in Ahmadian et al., 2024, https://arxiv.org/abs/2402.14740.

    Formula::

        b_new = decay · b + (1 − decay) · mean(r)

    Pure: returns the new baseline and changes nothing; the caller keeps it as state (and in the
    checkpoint). Rewards are detached since the baseline is a statistic, not a parameter. Use the
    baseline from *before* the update for the current batch, so it does not depend on the samples it
    is subtracted from.

    Args:
        baseline: () current baseline b (a tensor or a float).
        rewards: (B,) rewards of the current batch (any shape; all elements are averaged).
        decay: weight of the old baseline, in [0, 1].

    Returns:
        () new baseline, same dtype and device as rewards.
    """
    baseline = torch.as_tensor(baseline, dtype=rewards.dtype, device=rewards.device)  # ()
    return decay * baseline + (1.0 - decay) * rewards.detach().mean()  # ()


def no_baseline(rewards: Tensor) -> Tensor:
    r"""Advantages equal to the rewards (plain REINFORCE, Williams 1992): A_i = r_i.

    Args:
        rewards: (P, k) rewards.

    Returns:
        (P, k) advantages (a copy of the rewards).
    """
    return rewards.clone()  # (P, k)


def batch_normalized_advantages(rewards: Tensor, *, eps: float = 1e-6) -> Tensor:
    r"""REINFORCE++ advantages: rewards normalised over the whole batch, (r − mean_B) / (std_B + eps).

    Paper: "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models", Hu et al.,
    2025, https://arxiv.org/abs/2501.03262 (global advantage normalisation instead of GRPO's per-prompt
    normalisation, which it argues overfits to easy prompts).

    Formula, over every completion of the batch (P·k of them; std Bessel-corrected)::

        A_i = (r_i − mean(r)) / (std(r) + eps)

    Args:
        rewards: (P, k) rewards (any k ≥ 1: no per-prompt baseline).
        eps: added to the standard deviation.

    Returns:
        (P, k) advantages; all 0 when every reward is equal.
    """
    flat = rewards.reshape(-1)  # (P·k,)
    if flat.numel() < 2:
        return torch.zeros_like(rewards)
    return (rewards - flat.mean()) / (flat.std() + eps)  # (P, k)
