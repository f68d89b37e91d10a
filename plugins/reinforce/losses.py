"""Pure loss math for REINFORCE-style policy gradients: baselines, group advantages, the PG loss.

Group tensors are (P, k): P prompts, k sampled completions per prompt, one scalar reward each.
Flatten advantages to (P·k,) in the same order as the completions before `policy_gradient`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "group_normalized_advantages",
    "moving_average_baseline",
    "policy_gradient",
    "rloo_advantages",
]


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


def policy_gradient(seq_logps: Tensor, advantages: Tensor) -> Tensor:
    r"""REINFORCE policy-gradient loss −A · log π(y|x) per sequence (advantages detached).

    Paper: "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement
    Learning", Williams, 1992 (Machine Learning 8); LLM setting: Ahmadian et al., 2024,
    https://arxiv.org/abs/2402.14740 (the whole completion is one action).

    Formula::

        loss = −stopgrad(A) · log π(y|x)

    whose gradient is the score-function estimator −A ∇ log π(y|x).

    Args:
        seq_logps: (B,) sequence log-probs log π(y|x) (sums of per-token log-probs).
        advantages: (B,) advantages, e.g. `rloo_advantages(rewards).flatten()`.

    Returns:
        (B,) per-example losses.
    """
    return -advantages.detach() * seq_logps  # (B,)
