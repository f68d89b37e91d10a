"""Per-token KL(π ‖ π_ref) estimators (Schulman 2020) and the sequence KL of a completion."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["KL_ESTIMATORS", "kl_k1", "kl_k2", "kl_k3", "kl_penalty", "sequence_kl"]


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    r"""k1 KL estimator per token: log π − log π_ref (unbiased, high variance, can be negative).

    Reference: "Approximating KL Divergence", Schulman, 2020, http://joschu.net/blog/kl-approx.html.
    With samples from π and log-ratio r = log π_ref − log π, KL(π ‖ π_ref) ≈ k1 = −r.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.

    Returns:
        (B, T) per-token estimates.
    """
    return logps - ref_logps  # (B, T)


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    r"""k2 KL estimator per token: (log π_ref − log π)² / 2 (biased, low variance, non-negative).

    Reference: Schulman, 2020, http://joschu.net/blog/kl-approx.html. With r = log π_ref − log π,
    k2 = r² / 2.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.

    Returns:
        (B, T) per-token estimates.
    """
    log_ratio = ref_logps - logps  # (B, T)
    return 0.5 * log_ratio**2  # (B, T)


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    r"""k3 KL estimator per token: (e^r − 1) − r with r = log π_ref − log π (unbiased, low variance, ≥ 0).

    Reference: Schulman, 2020, http://joschu.net/blog/kl-approx.html. k3 = (e^r − 1) − r; used
    e.g. as the KL penalty of GRPO (Shao et al., 2024, https://arxiv.org/abs/2402.03300).

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.

    Returns:
        (B, T) per-token estimates.
    """
    log_ratio = ref_logps - logps  # (B, T)
    # expm1 keeps precision when the policy is close to the reference (r ≈ 0).
    return torch.expm1(log_ratio) - log_ratio  # (B, T)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logps: Tensor, ref_logps: Tensor, *, estimator: str = "k1") -> Tensor:
    r"""Per-token KL(π ‖ π_ref) estimate with the named estimator ("k1", "k2" or "k3").

    Reference: Schulman, 2020, http://joschu.net/blog/kl-approx.html; see `kl_k1`, `kl_k2`,
    `kl_k3`. The estimators live in `KL_ESTIMATORS`.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy.
        ref_logps: (B, T) log-probs under the reference model.
        estimator: key of `KL_ESTIMATORS`.

    Returns:
        (B, T) per-token estimates.

    Raises:
        ValueError: for an unknown estimator name.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(
            f"kl_penalty: unknown estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}"
        ) from None
    return fn(logps, ref_logps)


def sequence_kl(logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    r"""Per-token KL(π ‖ π_ref) estimates on a completion, 0 off it; ``.sum(1)`` is the sequence KL.

    Formula: ``kl_penalty(logps, ref_logps, estimator) · M`` (see :func:`kl_penalty`).

    Args:
        logps: (N, T−1) policy log-probs of the sampled tokens.
        ref_logps: (N, T−1) reference log-probs of the same tokens.
        mask: (N, T−1) True on completion tokens.
        estimator: ``k1`` | ``k2`` | ``k3``.

    Returns:
        (N, T−1) per-token estimates.
    """
    return kl_penalty(logps, ref_logps, estimator=estimator) * mask  # (N, T-1)
