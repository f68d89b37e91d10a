"""The GRPO family's policy losses: pure functions of the current and sampling log-probs.

Every loss takes the same tensors — ``logps`` (N, T) log π_θ(y_t) of the sampled tokens under the policy
being trained, ``old_logps`` (N, T) log π_old(y_t) under the policy that sampled them (recorded at
sampling time by the training path, at the sampling temperature; detached), ``advantages`` (N,) one per
completion (or (N, T) per token), ``mask`` (N, T) the completion tokens that count — plus its options:

- ``epsilon_low`` / ``epsilon_high``: the clipping range of the importance ratio;
- ``aggregation``: how per-token losses become one number (:mod:`alignkit.rl.aggregation`:
  ``token_mean``, ``seq_mean_token_mean``, ``seq_mean_token_sum``, ``seq_mean_token_sum_norm``), each
  a mean over its own unit; ``norm_length`` is L of ``seq_mean_token_sum_norm``.

and returns ``(loss, stats)``: the scalar loss and detached diagnostics (``clip_frac`` — the share of
counted tokens whose gradient the clip removed, ``ratio_mean``, ``approx_kl`` — the k3 estimate of
KL(π_old ‖ π_θ)). With ``logps == old_logps`` (the first update of a rollout) every ratio is exactly 1.

The variants differ in what they clip and how they aggregate; each is a few lines over one shared
clipped surrogate, so a new one is a registered function, not a branch in the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.rl import aggregate, masked_mean

__all__ = ["cispo", "clipped_surrogate", "dapo", "dr_grpo", "grpo", "gspo"]


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    return (advantages[:, None] if advantages.dim() == 1 else advantages).detach().expand_as(like)  # (N, T)


def _stats(log_ratio: Tensor, clipped: Tensor, mask: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return {"clip_frac": masked_mean(clipped.to(log_ratio.dtype), mask),
                "ratio_mean": masked_mean(torch.exp(log_ratio), mask),
                "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask)}


def clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float,
                      epsilon_high: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-token clipped surrogate −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A) (PPO, Schulman et al. 2017).

    Args:
        logps: (N, T) current log-probs. old_logps: (N, T) sampling log-probs (detached here).
        advantages: (N,) or (N, T). mask: (N, T) counted tokens.
        epsilon_low / epsilon_high: the clip range below and above 1.

    Returns:
        (per-token losses (N, T), log-ratio (N, T), whether the clip is active (N, T) bool).
    """
    log_ratio = logps - old_logps.detach()  # (N, T)
    ratio = torch.exp(log_ratio)  # (N, T)
    adv = _per_token(advantages, ratio)  # (N, T)
    unclipped = -ratio * adv  # (N, T)
    clipped = -torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv  # (N, T)
    return torch.maximum(unclipped, clipped), log_ratio, clipped > unclipped


def grpo(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float = 0.2,
         epsilon_high: float = 0.2, aggregation: str = "seq_mean_token_mean",
         norm_length: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""GRPO's policy loss: the clipped surrogate, averaged per completion, then over completions.

    Paper: "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models", Shao et
    al., 2024, https://arxiv.org/abs/2402.03300 (eq. 3, without its KL term: the method adds it).

    Formula, with ρ_t = π_θ(y_t) / π_old(y_t) and A_i the completion's (group-normalised) advantage::

        L = 1/G Σ_i 1/|y_i| Σ_t −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i)

    Args:
        logps / old_logps: (N, T). advantages: (N,) or (N, T). mask: (N, T).
        epsilon_low / epsilon_high: clip range (symmetric 0.2 in the paper).
        aggregation: ``seq_mean_token_mean`` in the paper (see the module docstring for the others).
        norm_length: L for ``seq_mean_token_sum_norm``.

    Returns:
        (loss (), stats: clip_frac, ratio_mean, approx_kl).
    """
    losses, log_ratio, clip = clipped_surrogate(logps, old_logps, advantages, mask, epsilon_low=epsilon_low,
                                                epsilon_high=epsilon_high)
    return aggregate(losses, mask, aggregation, norm_length), _stats(log_ratio, clip, mask)


def dapo(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float = 0.2,
         epsilon_high: float = 0.28, aggregation: str = "token_mean",
         norm_length: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""DAPO's policy loss: clip-higher (ε_high > ε_low) and token-level aggregation.

    Paper: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", Yu et al., 2025,
    https://arxiv.org/abs/2503.14476 (eq. 8).

    Formula, over every counted token of every completion (long answers weigh by their length)::

        L = 1/Σ_i |y_i| Σ_i Σ_t −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i),  ε_low 0.2, ε_high 0.28

    Args and returns as :func:`grpo`.
    """
    return grpo(logps, old_logps, advantages, mask, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                aggregation=aggregation, norm_length=norm_length)


def dr_grpo(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float = 0.2,
            epsilon_high: float = 0.2, aggregation: str = "seq_mean_token_sum_norm",
            norm_length: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Dr. GRPO's policy loss: no length normalisation per completion (a constant L instead).

    Paper: "Understanding R1-Zero-Like Training: A Critical Perspective", Liu et al., 2025,
    https://arxiv.org/abs/2503.20783 (section 3.2): dividing by |y_i| favours long wrong answers; dividing
    by a constant L (the generation budget) does not. Its other change, advantages without the group
    std, is the estimator's (``method.advantage=group_norm method.scale_by_std=false``).

    Formula::

        L = 1/G Σ_i 1/L Σ_t −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i)

    Args and returns as :func:`grpo`; ``norm_length`` (L) is required.
    """
    return grpo(logps, old_logps, advantages, mask, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                aggregation=aggregation, norm_length=norm_length)


def gspo(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float = 3e-4,
         epsilon_high: float = 4e-4, aggregation: str = "seq_mean_token_mean",
         norm_length: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""GSPO's policy loss: one length-normalised importance ratio per completion, clipped per completion.

    Paper: "Group Sequence Policy Optimization", Zheng et al., 2025, https://arxiv.org/abs/2507.18071
    (eq. 5-7): token-level ratios are noisy estimates of a sequence-level correction; GSPO uses

        s_i = (π_θ(y_i) / π_old(y_i))^(1/|y_i|) = exp(1/|y_i| Σ_t (log π_θ(y_t) − log π_old(y_t)))
        L   = 1/G Σ_i −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)

    with a much tighter range (ε_low 3e-4, ε_high 4e-4 in the paper). The per-completion loss is given
    to every counted token of the completion, so ``seq_mean_token_mean`` gives the formula above. Per-token
    advantages (N, T) (importance-weighted ones) weight each token's copy of it.

    Args and returns as :func:`grpo`.
    """
    mask_f = mask.to(logps.dtype)  # (N, T)
    log_ratio = logps - old_logps.detach()  # (N, T)
    seq_log_ratio = (log_ratio * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp_min(1)  # (N,)
    ratio = torch.exp(seq_log_ratio)[:, None].expand_as(logps)  # (N, T): s_i on each token of completion i
    adv = _per_token(advantages, logps)  # (N, T): A_i, or per-token A_i·w_t (importance-weighted)
    unclipped = -ratio * adv  # (N, T)
    clipped = -torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv  # (N, T)
    losses = torch.maximum(unclipped, clipped)  # (N, T)
    clip = clipped > unclipped  # (N, T)
    return aggregate(losses, mask, aggregation, norm_length), _stats(seq_log_ratio[:, None].expand_as(logps), clip, mask)


def cispo(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float = 1.0,
          epsilon_high: float = 0.28, aggregation: str = "token_mean",
          norm_length: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""CISPO's policy loss: a REINFORCE term weighted by the clipped, detached importance ratio.

    Paper: "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention", MiniMax, 2025,
    https://arxiv.org/abs/2506.13585 (eq. 4-5): clipping the *weight* instead of the surrogate keeps the
    gradient of every token (PPO's clip drops rare tokens after the first update).

    Formula, with r̂_t = clip(ρ_t, 1 − ε_low, 1 + ε_high) (no lower bound in the paper: ε_low = 1)::

        L = 1/Σ_i |y_i| Σ_i Σ_t −sg(r̂_t) · A_i · log π_θ(y_t)

    Args and returns as :func:`grpo` (``clip_frac``: tokens whose weight the clip changed).
    """
    log_ratio = logps - old_logps.detach()  # (N, T)
    ratio = torch.exp(log_ratio)  # (N, T)
    weight = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high).detach()  # (N, T)
    losses = -weight * _per_token(advantages, logps) * logps  # (N, T)
    clip = (ratio < 1.0 - epsilon_low) | (ratio > 1.0 + epsilon_high)  # (N, T)
    return aggregate(losses, mask, aggregation, norm_length), _stats(log_ratio, clip, mask)
