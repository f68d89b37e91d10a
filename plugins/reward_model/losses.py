"""Pure loss math for reward models: pairwise Bradley-Terry and pointwise attribute regression.

Functions take reward-model outputs (scalars per completion, or per attribute) and return
per-example losses (B,); the caller reduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry", "pointwise_mse"]


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
