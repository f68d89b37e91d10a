"""Means and whitening over the valid (response) tokens of right-padded (B, T) tensors."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean", "masked_whiten"]


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
