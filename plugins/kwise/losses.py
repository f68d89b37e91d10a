"""Pure loss math for K-wise ranked comparisons (Plackett-Luce) and its all-pairs baseline.

Rewards come as (B, K): row b holds the reward-model scores of K completions of one prompt, ordered
from best to worst by the annotator.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pairwise_split", "plackett_luce"]

# How far below every present reward the masked slots are pushed: exp(-1e4) is exactly 0 in every
# float dtype, so they drop out of the log-sum-exp, while staying finite keeps
# logcumsumexp's backward free of the NaN that −inf inputs produce.
_MASK_OFFSET = 1.0e4


def plackett_luce(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Plackett-Luce negative log-likelihood of a best-first ranking of K completions.

    Paper: "Principled Reinforcement Learning with Human Feedback from Pairwise or K-wise
    Comparisons", Zhu, Jordan & Jiao, 2023, https://arxiv.org/abs/2301.11270 (the K-wise MLE used
    to train the Starling reward models). Model: Plackett, 1975; Luce, 1959.

    Formula, for the rewards r_1, ..., r_K of K completions in annotated order (r_1 = the best)::

        loss = Σ_{j=1..K} [ log Σ_{k=j..K} exp(r_k) − r_j ]

    i.e. the best item is picked by a softmax over all K, the next over the remaining K − 1, and so
    on; the last term is always 0. For K = 2 this is exactly Bradley-Terry,
    −log σ(r_1 − r_2). Adding a constant to a row leaves the loss unchanged.

    With a mask, only present items take part: both sums run over present j and k only. The
    intended use is lists shorter than K padded at the end, but any mask gives the Plackett-Luce
    likelihood of the present items in their given order. Rows with no (or one) present item give 0.

    Computed for all rows at once: the inner sums are a reverse cumulative log-sum-exp
    (`torch.logcumsumexp` on the flipped tensor).

    Args:
        rewards: (B, K) rewards, best first.
        mask: optional (B, K) bool, True = present; None = all present.

    Returns:
        (B,) per-example losses.
    """
    present = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()  # (B, K)
    # The loss is invariant to a per-row shift; shifting by the row max (a detached constant) keeps
    # the log-sum-exp and the subtraction at small magnitudes, which makes K = 2 agree with
    # Bradley-Terry to the last bits instead of to ulp(max reward).
    detached = rewards.detach()  # (B, K)
    row_max = torch.where(present, detached, -torch.inf).amax(dim=-1, keepdim=True)  # (B, 1)
    row_min = torch.where(present, detached, torch.inf).amin(dim=-1, keepdim=True)  # (B, 1)
    # Rows with nothing present: any finite constants do, their terms are all masked out below.
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)  # (B, 1)
    row_min = torch.where(torch.isfinite(row_min), row_min, 0.0)  # (B, 1)
    # Padding values of any size, -inf or NaN are replaced, so they cannot change the result.
    shifted = torch.where(present, rewards - row_max, row_min - row_max - _MASK_OFFSET)  # (B, K)
    tail_lse = torch.logcumsumexp(shifted.flip(-1), dim=-1).flip(-1)  # (B, K)
    terms = torch.where(present, tail_lse - shifted, rewards.new_zeros(()))  # (B, K)
    return terms.sum(dim=-1)  # (B,)


def pairwise_split(rewards: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""All K(K−1)/2 (chosen, rejected) pairs of best-first ranked rewards, for an all-pairs BT baseline.

    The "all pairs" alternative to Plackett-Luce discussed by Zhu, Jordan & Jiao, 2023,
    https://arxiv.org/abs/2301.11270 (and used by InstructGPT, Ouyang et al., 2022,
    https://arxiv.org/abs/2203.02155, which trains on all K-choose-2 comparisons of a ranking):
    for every i < j the item ranked i is the chosen one and j the rejected one.

    Pairs come in `torch.triu_indices(K, K, offset=1)` order: (0,1), (0,2), ..., (0,K−1), (1,2), ...
    Use with `bradley_terry`, which is elementwise::

        chosen, rejected, valid = pairwise_split(rewards, mask)      # (B, P) each
        per_pair = bradley_terry(chosen, rejected)                   # (B, P)
        loss = (per_pair * valid).sum(-1) / valid.sum(-1).clamp(min=1)   # (B,)

    Args:
        rewards: (B, K) rewards, best first.
        mask: optional (B, K) bool, True = present; None = all present.

    Returns:
        (chosen (B, P), rejected (B, P), valid (B, P) bool) with P = K(K−1)/2; `valid` is True where
        both items of the pair are present. Gradients flow back to `rewards`.
    """
    k = rewards.shape[-1]
    i, j = torch.triu_indices(k, k, offset=1, device=rewards.device)  # (P,), (P,)
    chosen = rewards[..., i]  # (B, P)
    rejected = rewards[..., j]  # (B, P)
    if mask is None:
        valid = torch.ones_like(chosen, dtype=torch.bool)  # (B, P)
    else:
        mask = mask.bool()  # (B, K)
        valid = mask[..., i] & mask[..., j]  # (B, P)
    return chosen, rejected, valid
