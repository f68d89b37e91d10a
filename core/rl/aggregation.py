"""How per-token policy losses become one number: the aggregation modes of GRPO-family losses.

A per-token loss ``l`` (N, T) with a mask ``M`` of the completion tokens that count is reduced by one of

============================  =====================================================  ==============
mode                          formula                                                unit
============================  =====================================================  ==============
``token_mean``                Σ_i Σ_t M l / Σ_i Σ_t M  (DAPO, Yu et al. 2025)         tokens
``seq_mean_token_mean``       1/S Σ_i (Σ_t M l / Σ_t M)  (GRPO, Shao et al. 2024)     sequences
``seq_mean_token_sum``        1/S Σ_i Σ_t M l                                          sequences
``seq_mean_token_sum_norm``   1/S Σ_i Σ_t M l / L  (Dr. GRPO, Liu et al. 2025;       sequences
                              L a constant: the generation budget, not a batch's
                              longest answer)
============================  =====================================================  ==============

where S counts the sequences with at least one counted token (a completion masked out entirely, e.g.
a truncated one under ``rollout.mask_truncated``, is not a sequence of the loss). Each mode is a mean
over its *unit*; :func:`aggregation_units` says how many units a micro-batch holds, which is what an
objective's ``weight()`` reports so that gradient accumulation and several processes train exactly
what one big batch would (see :mod:`alignkit.interfaces`).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

__all__ = ["AGGREGATIONS", "aggregate", "aggregation_units"]


def _sequences(mask: Tensor) -> Tensor:
    return mask.any(dim=1)  # (N,) sequences with at least one counted token


def _token_mean(losses: Tensor, mask: Tensor, norm_length: float | None) -> Tensor:
    return (losses * mask).sum() / mask.sum().clamp_min(1)


def _seq_mean_token_mean(losses: Tensor, mask: Tensor, norm_length: float | None) -> Tensor:
    per_seq = (losses * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)  # (N,)
    return per_seq.sum() / _sequences(mask).sum().clamp_min(1)


def _seq_mean_token_sum(losses: Tensor, mask: Tensor, norm_length: float | None) -> Tensor:
    return (losses * mask).sum() / _sequences(mask).sum().clamp_min(1)


def _seq_mean_token_sum_norm(losses: Tensor, mask: Tensor, norm_length: float | None) -> Tensor:
    if not norm_length or norm_length <= 0:
        raise ValueError("aggregation 'seq_mean_token_sum_norm' needs norm_length > 0 (the generation budget)")
    return (losses * mask).sum() / (_sequences(mask).sum().clamp_min(1) * float(norm_length))


#: Mode name -> (reduce(losses (N, T), mask (N, T), norm_length) -> (), unit name).
AGGREGATIONS: dict[str, tuple[Callable[[Tensor, Tensor, float | None], Tensor], str]] = {
    "token_mean": (_token_mean, "tokens"),
    "seq_mean_token_mean": (_seq_mean_token_mean, "sequences"),
    "seq_mean_token_sum": (_seq_mean_token_sum, "sequences"),
    "seq_mean_token_sum_norm": (_seq_mean_token_sum_norm, "sequences"),
}


def _mode(aggregation: str) -> tuple[Callable[[Tensor, Tensor, float | None], Tensor], str]:
    try:
        return AGGREGATIONS[aggregation]
    except KeyError:
        raise ValueError(f"aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}") from None


def aggregate(losses: Tensor, mask: Tensor, aggregation: str, norm_length: float | None = None) -> Tensor:
    """Reduce per-token losses to a scalar: the mean over the mode's units (see the module docstring).

    Args:
        losses: (N, T) per-token losses.
        mask: (N, T) bool or 0/1, the tokens that count.
        aggregation: a key of :data:`AGGREGATIONS`.
        norm_length: L of ``seq_mean_token_sum_norm`` (the maximum completion length).

    Returns:
        () the loss; 0 when no token counts.

    Raises:
        ValueError: an unknown mode, or ``seq_mean_token_sum_norm`` without ``norm_length``.
    """
    reduce, _ = _mode(aggregation)
    return reduce(losses, mask.to(losses.dtype), norm_length)


def aggregation_units(mask: Tensor, aggregation: str) -> float:
    """How many units of ``aggregation`` (tokens, or sequences with a counted token) ``mask`` (N, T) holds."""
    _, unit = _mode(aggregation)
    mask = mask.bool()
    return float(mask.sum() if unit == "tokens" else _sequences(mask).sum())
