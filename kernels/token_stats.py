"""The :class:`TokenStats` result and the per-sequence reductions shared by every backend."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenStats(NamedTuple):
    """Per-token log-probs plus what sequence-level methods need, from one pass over the vocab.

    Attributes:
        logprobs: (B, T) float32, ``log softmax(z / tau)[label]``, 0 where ``label == ignore_index``.
        entropy: (B, T) float32 entropy of ``softmax(z / tau)`` (0 at ignored positions), or
            ``None`` when not requested.
        sum: (B,) float32 sum of ``logprobs`` over the valid positions of each sequence.
        mean: (B,) float32 ``sum / count``; 0 for a sequence with no valid position.
        count: (B,) int64 number of valid positions (``label != ignore_index``).
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    sum: torch.Tensor
    mean: torch.Tensor
    count: torch.Tensor


def mean_from_sum(seq_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Masked mean per sequence, 0 (not NaN) where a sequence has no valid token.

    Args:
        seq_sum: (B,) float32 masked sums.
        count: (B,) int64 valid-token counts.

    Returns:
        (B,) float32.
    """
    return seq_sum / count.clamp(min=1).to(seq_sum.dtype)  # (B,)


def fold_token_grads(
    grad_logp: torch.Tensor | None,
    grad_sum: torch.Tensor | None,
    grad_mean: torch.Tensor | None,
    valid: torch.Tensor,
    count: torch.Tensor,
) -> torch.Tensor:
    """Turn the upstream gradients of (logprobs, sum, mean) into one gradient per token.

    ``sum_b = Σ_t logp_bt · valid_bt`` and ``mean_b = sum_b / max(count_b, 1)``, so
    ``dL/dlogp_bt = g_logp_bt + valid_bt · (g_sum_b + g_mean_b / max(count_b, 1))``. Ignored positions
    get 0 so that they never contribute to the logits gradient.

    Args:
        grad_logp: (B, T) or None.
        grad_sum: (B,) or None.
        grad_mean: (B,) or None.
        valid: (B, T) bool, ``label != ignore_index``.
        count: (B,) int64.

    Returns:
        (B, T) float32 (float64 if an upstream gradient is) gradient w.r.t. the log-probs.
    """
    dtype = torch.float32
    for x in (grad_logp, grad_sum, grad_mean):
        if x is not None and x.dtype == torch.float64:
            dtype = torch.float64
    g = torch.zeros(valid.shape, dtype=dtype, device=valid.device)  # (B, T)
    if grad_logp is not None:
        g += grad_logp
    per_seq = torch.zeros(valid.shape[0], dtype=dtype, device=valid.device)  # (B,)
    if grad_sum is not None:
        per_seq += grad_sum
    if grad_mean is not None:
        per_seq += grad_mean / count.clamp(min=1).to(dtype)
    g += per_seq[:, None]
    return g * valid  # (B, T)


def masked_labels(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, safe)``: (N,) bool ``label != ignore_index`` and (N,) labels with 0 at ignored rows
    (a valid index to gather with; what is gathered there is masked out)."""
    valid = labels != ignore_index  # (N,)
    return valid, torch.where(valid, labels, 0)  # (N,)


def masked_grads(
    grad_logp: torch.Tensor, grad_ent: torch.Tensor | None, valid: torch.Tensor, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Upstream per-token gradients in the accumulation dtype, 0 at ignored rows: ``(g, g_ent)``.

    Args:
        grad_logp: (N,) gradient of the log-probs.
        grad_ent: (N,) gradient of the entropy, or None.
        valid: (N,) bool.
        acc: Accumulation dtype.

    Returns:
        (N,) contiguous ``g`` and ``g_ent`` (or None).
    """
    g = grad_logp.to(acc) * valid  # (N,)
    return g, (grad_ent.to(acc) * valid if grad_ent is not None else None)  # (N,)
