"""Supervised fine-tuning loss."""

from __future__ import annotations

import torch


def nll(sequence_logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of the completion tokens.

    NLL = -(Σ_b Σ_t log p(y_bt | x_b, y_b<t)) / (Σ_b n_b), summed over completion tokens only
    (prompt and padding positions carry no log-prob), so long answers weigh by their token count.

    Args:
        sequence_logps: (B,) summed log-probs of each sequence's completion tokens.
        token_counts: (B,) number of completion tokens of each sequence.

    Returns:
        A scalar; 0 when no sequence has a completion token.
    """
    total = token_counts.sum().clamp_min(1)  # ()
    return -sequence_logps.sum() / total
