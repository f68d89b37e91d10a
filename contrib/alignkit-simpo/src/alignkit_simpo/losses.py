"""The SimPO loss as a pure function on tensors (``alignkit.losses.simpo`` once installed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simpo(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, beta: float = 2.0, gamma: float = 1.0,
          label_smoothing: float = 0.0) -> torch.Tensor:
    """SimPO: reference-free preference loss on length-normalised log-probs (Meng et al. 2024).

    Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    https://arxiv.org/abs/2405.14734. With the length-normalised log-likelihood
    ℓ(y) = (1/|y|) Σ_t log π(y_t | x, y_<t) and z = β·(ℓ(y_c) − ℓ(y_r)) − γ::

        loss = −(1 − ε)·log σ(z) − ε·log σ(−z)

    ε (``label_smoothing``) is 0 in the paper; it hedges against flipped preference labels.

    Args:
        chosen_logps: (B,) ℓ(y_c), the mean log-prob per completion token of each chosen answer.
        rejected_logps: (B,) ℓ(y_r) of each rejected answer.
        beta: β, the reward scale (the paper uses 2.0–2.5).
        gamma: γ, the target reward margin (the paper's γ/β is 0.3–0.8).
        label_smoothing: ε in [0, 0.5).

    Returns:
        (B,) per-pair losses.
    """
    z = beta * (chosen_logps - rejected_logps) - gamma  # (B,)
    if label_smoothing:
        return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)  # (B,)
    return -F.logsigmoid(z)  # (B,)
