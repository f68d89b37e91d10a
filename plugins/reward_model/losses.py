"""Pure loss math for reward models: pairwise Bradley-Terry, K-wise Plackett-Luce over ranked lists (and its
all-pairs baseline), and pointwise attribute regression.

Functions take reward-model outputs (scalars per completion, or per attribute) and return
per-example losses (B,); the caller reduces. Ranked rewards come as (B, K): row b holds the scores of K
completions of one prompt, ordered from best to worst by the annotator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry", "pairwise_split", "plackett_luce", "pointwise_mse"]


def bradley_terry(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | None = None,
    center_weight: float = 0.0,
    soft_labels: Tensor | None = None,
) -> Tensor:
    r"""Bradley-Terry pairwise loss −log σ(r_c − r_r − m), with optional centering and soft labels.

    Papers:
      - Model: "Rank Analysis of Incomplete Block Designs: I. The Method of Paired Comparisons",
        Bradley & Terry, 1952 (Biometrika 39). RLHF use: "Training language models to follow
        instructions with human feedback", Ouyang et al., 2022, https://arxiv.org/abs/2203.02155.
      - Margin m: "Llama 2: Open Foundation and Fine-Tuned Chat Models", Touvron et al., 2023,
        https://arxiv.org/abs/2307.09288 (section 3.2.2; m grows with the annotated preference
        strength).
      - Centering: "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward
        Hacking", Eisenstein et al., 2023, https://arxiv.org/abs/2312.09244 (pins the free additive
        constant of BT rewards near zero).
      - Soft labels p, e.g. from an AI judge's probabilities (RLAIF): "RLAIF vs. RLHF: Scaling
        Reinforcement Learning from Human Feedback with AI Feedback", Lee et al., 2023,
        https://arxiv.org/abs/2309.00267.

    Formula, with d = r_c − r_r − m (m = 0 when margin is None)::

        hard labels:  loss = −log σ(d)
        soft labels:  loss = −[p · log σ(d) + (1 − p) · log σ(−d)]
        plus          center_weight · (r_c + r_r)²

    Args:
        chosen_rewards: (B,) rewards of the preferred completions (any shape works elementwise,
            e.g. (B, P) for all pairs of a ranked list).
        rejected_rewards: (B,) rewards of the other completions.
        margin: optional (B,) margin m the chosen reward must exceed the rejected one by.
        center_weight: weight η ≥ 0 of the centering term (0 disables it).
        soft_labels: optional (B,) probability p in [0, 1] that the chosen completion is better.

    Returns:
        (B,) per-example losses.
    """
    d = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        d = d - margin  # (B,)
    if soft_labels is None:
        loss = -F.logsigmoid(d)  # (B,)
    else:
        # Binary cross-entropy on the logit d with target p, in its stable log-sigmoid form.
        loss = -(soft_labels * F.logsigmoid(d) + (1.0 - soft_labels) * F.logsigmoid(-d))  # (B,)
    if center_weight:
        loss = loss + center_weight * (chosen_rewards + rejected_rewards) ** 2  # (B,)
    return loss


def pointwise_mse(predictions: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Per-example mean squared error over the present attributes (SteerLM attribute regression).

    Paper: "SteerLM: Attribute Conditioned SFT as an (User-Steerable) Alternative to RLHF",
    Dong, Wang, Delalleau, Zeng, Shen, Kong, Kuchaiev, 2023, https://arxiv.org/abs/2310.05344
    (the attribute prediction model regresses helpfulness, correctness, ... scores).

    Formula, with M_a = 1 where attribute a is labelled::

        loss_b = Σ_a M_ba (ŷ_ba − y_ba)² / max(1, Σ_a M_ba)

    A row with no labelled attribute gives 0 (and zero gradient), never NaN; targets at missing
    positions may hold anything, NaN included.

    Args:
        predictions: (B, A) predicted attribute scores (or (B,) for a single scalar score).
        targets: (B, A) labelled scores, same shape.
        mask: optional (B, A) bool, True where the label is present; None = all present.

    Returns:
        (B,) per-example losses.
    """
    if predictions.dim() == 1:
        predictions, targets = predictions[:, None], targets[:, None]  # (B, 1)
        mask = None if mask is None else mask[:, None]  # (B, 1)
    if mask is None:
        return ((predictions - targets) ** 2).mean(dim=-1)  # (B,)
    mask = mask.bool()  # (B, A)
    # where() before squaring, not a multiply by the mask: a NaN placeholder label would otherwise
    # leak into the loss or, through the square's backward (0 * NaN), into the gradient.
    diff = torch.where(mask, predictions - targets, predictions.new_zeros(()))  # (B, A)
    sq = diff**2  # (B, A)
    count = mask.sum(dim=-1).clamp(min=1).to(sq.dtype)  # (B,)
    return sq.sum(dim=-1) / count  # (B,)


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
