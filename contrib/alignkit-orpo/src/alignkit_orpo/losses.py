"""ORPO's odds-ratio preference loss, a pure function on tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# log(1 - exp(l)) is -inf at l = 0 (an answer of probability 1); keep l strictly negative.
MAX_MEAN_LOGP = -1e-6


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log odds(y) = l - log(1 - exp(l)) of answers with mean per-token log-prob l, shape preserved.

    ``l`` is clamped to at most ``MAX_MEAN_LOGP`` (-1e-6) so that l = 0 stays finite.
    """
    l = mean_logps.clamp(max=MAX_MEAN_LOGP)
    return l - torch.log(-torch.expm1(l))  # log(1 - exp(l)) = log(-expm1(l)), accurate near l = 0


def orpo_odds_ratio_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """ORPO odds-ratio loss −log σ(log odds(y_c) − log odds(y_r)) (Hong et al. 2024, arXiv:2403.07691).

    ORPO (odds-ratio preference optimisation, "ORPO: Monolithic Preference Optimization without
    Reference Model", Hong, Lee & Thorne 2024, https://arxiv.org/abs/2403.07691, eq. 6-7) adds
    this term, weighted by λ, to the NLL of the chosen answer; it needs no reference model.

        ℓ(y)          = (1/|y|) Σ_t log p(y_t | x, y_<t)      mean log-prob per answer token
        log odds(y)   = ℓ(y) − log(1 − exp ℓ(y))              odds(y) = P(y|x) / (1 − P(y|x))
        L_OR(y_c,y_r) = −log σ( log odds(y_c) − log odds(y_r) )

    ℓ is clamped to at most −1e-6 (log(1 − exp 0) = −inf).

    Args:
        chosen_logps: (P,) mean log-prob per answer token ℓ(y_c) of each chosen answer (≤ 0).
        rejected_logps: (P,) the same for each rejected answer ℓ(y_r).

    Returns:
        (P,) the per-pair losses (reduce with ``.mean()`` over pairs).
    """
    return -F.logsigmoid(log_odds(chosen_logps) - log_odds(rejected_logps))
