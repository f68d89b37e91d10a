"""The train-inference mismatch: measured every step, optionally corrected by importance sampling.

Completions are sampled by an inference engine (``rollout.engine``), whose log-probs of the sampled
tokens, log π_sampler(y_t), differ from the trainer's log π_old(y_t) of the same tokens under the same
weights (another kernel, batch shape or dtype; stale weights when ``rollout.sync_every > 1``). The
policy gradient treats the samples as drawn from π_old; they were drawn from π_sampler. With
r_t = π_old(y_t) / π_sampler(y_t):

- **measured** (always, when the rollout kept the sampler's log-probs): ``mismatch_kl`` = mean over
  completion tokens of r − 1 − log r (k3 estimate of KL(π_sampler ‖ π_old), Schulman 2020), and the
  largest and smallest r (``mismatch_ratio_max`` / ``mismatch_ratio_min``);
- **corrected** (``method.is_correction=<name>``, a registered :class:`~alignkit.specs.ISCorrectionSpec`):
  each token's policy-gradient term is multiplied by a weight w_t(r) — truncated importance sampling
  (``tis``, w = min(r, C); Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy
  RL Training", https://fengyao.notion.site/off-policy-rl) or masked (``mis``, w = r·1[r ≤ C]), per
  token or per sequence (r of the sequence: exp Σ_t log r_t).

Every policy loss of this project is positively homogeneous in the advantage (PPO / GRPO clip, CISPO,
REINFORCE: loss(w·A) = w·loss(A) for w ≥ 0), so the weight is applied as a per-token factor on the
advantage; the KL and value terms are not weighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..interfaces import Max, Mean, MetricValue, Min
from ..step_metrics import token_means
from .masked import masked_mean

IS_LEVELS = ("token", "sequence")


@dataclass
class ISCorrectionOptions:
    """Options every online method takes (``method.*``) for the train-inference mismatch.

    Attributes:
        is_correction: ``none`` or a registered correction (``alignkit ls is_corrections``: ``tis``, ``mis``).
        is_cap: C, the cap of the importance ratio (> 1; 2.0 in Yao et al. 2025).
        is_level: ``token`` (a ratio per token) or ``sequence`` (the product over the completion).
    """

    is_correction: str = "none"
    is_cap: float = 2.0
    is_level: str = "token"


def _level_log_ratio(log_ratio: Tensor, mask: Tensor, level: str) -> Tensor:
    """(N, T) per-token log r, or each row's Σ_t log r_t over its counted tokens broadcast to its tokens."""
    log_ratio = log_ratio.masked_fill(~mask, 0.0)  # (N, T)
    if level == "token":
        return log_ratio
    return log_ratio.sum(dim=1, keepdim=True).expand_as(log_ratio)  # (N, T)


def truncated_is_weights(log_ratio: Tensor, mask: Tensor, *, cap: float, level: str = "token") -> Tensor:
    r"""Truncated importance sampling (TIS): w = min(r, C), 0 off the mask.

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training":
    ∇J ≈ E_{y∼π_sampler}[min(π_old(y_t)/π_sampler(y_t), C) · ∇ log π_θ(y_t) · A].

    Args:
        log_ratio: (N, T) log π_old(y_t) − log π_sampler(y_t).
        mask: (N, T) bool, the completion tokens that count.
        cap: C > 0.
        level: ``token`` (r_t) or ``sequence`` (r = Π_t r_t of the row, the same weight on each token).

    Returns:
        (N, T) weights, detached, 0 where ``mask`` is False.
    """
    x = _level_log_ratio(log_ratio.detach(), mask, level)  # (N, T)
    return torch.exp(torch.clamp(x, max=math.log(cap))) * mask  # (N, T): exp(min(x, log C)) = min(r, C)


def masked_is_weights(log_ratio: Tensor, mask: Tensor, *, cap: float, level: str = "token") -> Tensor:
    r"""Masked importance sampling (MIS): w = r where r ≤ C, else 0 (the token or sequence leaves the gradient).

    Liu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse from the Training-Inference
    Mismatch" (https://yingru.notion.site/When-Speed-Kills-Stability): rejecting the samples whose ratio
    is too large instead of truncating their weight.

    Args / Returns: as :func:`truncated_is_weights`.
    """
    x = _level_log_ratio(log_ratio.detach(), mask, level)  # (N, T)
    keep = (x <= math.log(cap)) & mask  # (N, T)
    return torch.exp(torch.clamp(x, max=math.log(cap))) * keep  # (N, T)


def mismatch_stats(log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``mismatch_kl`` (k3 of KL(π_sampler ‖ π_old) per token), ``mismatch_ratio_max`` / ``_min`` of r = π_old/π_sampler.

    Args:
        log_ratio: (N, T) log π_old(y_t) − log π_sampler(y_t). mask: (N, T) bool.
    """
    with torch.no_grad():
        x = log_ratio.detach().masked_fill(~mask, 0.0)  # (N, T)
        counted = x[mask]  # (M,)
        if counted.numel() == 0:
            zero = x.new_zeros(())
            return {"mismatch_kl": zero, "mismatch_ratio_max": zero + 1, "mismatch_ratio_min": zero + 1}
        return {"mismatch_kl": masked_mean(torch.expm1(x) - x, mask),
                "mismatch_ratio_max": torch.exp(counted.max()), "mismatch_ratio_min": torch.exp(counted.min())}


class SamplerCorrection:
    """The mismatch statistics and the configured importance weights of one online method.

    Args:
        registry: the plugin registry (``is_corrections`` are looked up by name).
        cfg: the method's config node, with the :class:`ISCorrectionOptions` fields.

    Raises:
        UnknownNameError: ``method.is_correction`` names nothing registered.
        ConfigError: a cap ≤ 1 or an unknown level.
    """

    def __init__(self, registry: Any, cfg: Any) -> None:
        name = str(getattr(cfg, "is_correction", "none"))
        self.fn = None if name == "none" else registry.get("is_corrections", name, where="method.is_correction").fn
        self.name, self.cap, self.level = name, float(getattr(cfg, "is_cap", 2.0)), str(getattr(cfg, "is_level", "token"))
        if self.fn is not None and not self.cap > 1:
            raise ConfigError(f"method.is_cap={self.cap}: the importance-ratio cap must be > 1")
        if self.level not in IS_LEVELS:
            raise ConfigError(f"method.is_level={self.level!r}; expected one of {', '.join(IS_LEVELS)}")

    def weights(self, old_logps: Tensor, sampler_logps: Tensor | None, mask: Tensor
                ) -> tuple[Tensor | None, dict[str, MetricValue]]:
        """(N, T) importance weights (None without a correction) and the micro-batch's mismatch metrics
        (:class:`~alignkit.interfaces.Mean` / ``Max`` / ``Min``, combined over the step by the loop).

        Args:
            old_logps: (N, T) the trainer's log π_old of the sampled tokens (detached here).
            sampler_logps: (N, T') the engine's, T' ≥ T (``RolloutBatch.sampler_logps``), or None when the
                rollout kept none (then there is nothing to measure; a configured correction is an error).
            mask: (N, T) bool completion tokens.

        Raises:
            ConfigError: a correction is configured and the rollout gave no sampler log-probs.
        """
        if sampler_logps is None:
            if self.fn is not None:
                raise ConfigError(f"method.is_correction={self.name} needs the sampler's log-probs, which this rollout "
                                  "does not record (use rollout=generate)")
            return None, {}
        log_ratio = old_logps.detach() - sampler_logps[:, : old_logps.shape[1]].to(old_logps.dtype)  # (N, T)
        stats = mismatch_stats(log_ratio, mask)
        # Logged per step: the KL as a mean over its tokens, the ratio's extremes as the step's extremes.
        metrics: dict[str, MetricValue] = {"mismatch_kl": Mean(stats["mismatch_kl"], mask.sum()),
                                           "mismatch_ratio_max": Max(stats["mismatch_ratio_max"]),
                                           "mismatch_ratio_min": Min(stats["mismatch_ratio_min"])}
        if self.fn is None:
            return None, metrics
        weights = self.fn(log_ratio, mask, cap=self.cap, level=self.level)  # (N, T)
        with torch.no_grad():
            raw = _level_log_ratio(log_ratio, mask, self.level)  # (N, T)
            metrics.update(token_means({"is_weight_mean": masked_mean(weights, mask),
                                        "is_capped_frac": masked_mean((raw > math.log(self.cap)).to(weights.dtype), mask)},
                                       mask))
        return weights, metrics


def weighted_advantages(advantages: Tensor, weights: Tensor | None) -> Tensor:
    """Advantages (N,) or (N, T) times per-token importance weights (N, T); unchanged without weights."""
    if weights is None:
        return advantages
    per_token = advantages[:, None] if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)
    return per_token.detach() * weights  # (N, T)
