"""Plain reference implementations, for tests and benchmarks (not used by the public ops).

* :func:`naive_token_stats`: ``log_softmax`` + ``gather`` on full (B, T, V) float32 logits — the
  ground truth every backend is compared with.
* :func:`native_linear_logprobs`: torch 2.13's fused ``F.linear_cross_entropy(reduction="none")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.kernels.token_stats import TokenStats, mean_from_sum


def naive_token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
) -> TokenStats:
    """Log-probs, entropy and per-sequence stats the obvious way (materialises everything).

    ``log p = log_softmax(z / tau)[y]``, ``H = -Σ_v softmax(z / tau)_v · log_softmax(z / tau)_v``.

    Args:
        logits: (B, T, V) any float dtype (computed in float32, float64 kept).
        labels: (B, T) int64.
        ignore_index: Label value of skipped positions (0 in every output).
        temperature: ``tau``.

    Returns:
        :class:`TokenStats` with entropy, differentiable through plain autograd.
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    valid = labels != ignore_index  # (B, T)
    logq = torch.log_softmax(logits.to(acc) / temperature, dim=-1)  # (B, T, V)
    logp = logq.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * valid  # (B, T)
    ent = -(logq.exp() * logq).sum(-1) * valid  # (B, T)
    count = valid.sum(-1)  # (B,)
    seq_sum = logp.sum(-1)  # (B,)
    return TokenStats(logp, ent, seq_sum, mean_from_sum(seq_sum, count), count)


def native_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int,
    temperature: float,
) -> torch.Tensor:
    """Per-token log-probs from torch's fused, chunked ``F.linear_cross_entropy``.

    ``log p_y = -CE(h W^T / tau, y)``; the temperature is folded into the input (``h / tau``), so
    autograd carries it into both gradients. Passing ``LinearCrossEntropyOptions()`` selects the
    chunked path (``options=None`` would be the reference path that builds the full logits); with
    ``reduction="none"`` the op recomputes logits chunk by chunk in its backward.

    Args:
        hidden: (N, d) float32 or float64 (the op returns the input dtype, so half inputs would
            lose the float32 output precision).
        weight: (V, d).
        labels: (N,) int64.
        ignore_index: Label value of skipped positions (their loss is 0).
        temperature: ``tau``.

    Returns:
        (N,) float32 log-probs, differentiable w.r.t. ``hidden`` and ``weight``.
    """
    x = hidden if temperature == 1.0 else hidden / temperature  # (N, d)
    nll = F.linear_cross_entropy(
        x,
        weight,
        labels,
        reduction="none",
        ignore_index=ignore_index,
        options=torch.nn.LinearCrossEntropyOptions(),
    )  # (N,)
    return -nll if nll.dtype == torch.float64 else (-nll).float()  # (N,)
