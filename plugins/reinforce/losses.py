"""Pure loss math for REINFORCE-style policy gradients: the sequence-level policy-gradient loss.

The baselines and advantage estimators are shared by every online method: :mod:`alignkit.rl`.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["policy_gradient"]


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
