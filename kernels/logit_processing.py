"""What a model does to ``h W^T`` before its softmax, as the constants the fused engines use.

Many causal LMs do not hand ``h W^T`` straight to the softmax: Phi adds an ``lm_head`` bias, Granite
divides by ``logits_scaling``, Cohere multiplies by ``logit_scale``, Gemma 2/3 cap the logits with
``softcap · tanh(logits / softcap)``. The fused ops take these as keyword arguments and apply them in
this order, before the sampling temperature ``tau``::

    u = h W^T + b                         (V,) bias b, optional
    a = u · s                              s = logit_scale
    c = softcap · tanh(a / softcap)        only when softcap is set (else c = a)
    z = c / tau

so that ``log p = z_y - logsumexp(z)``. The engines fold the scalars into as few operations on a
(tokens, V) tile as possible: ``z = cap_out · tanh(cap_in · alpha · u)`` with ``alpha = s`` (capped)
or ``z = alpha · u`` with ``alpha = s / tau`` (not capped), and the derivative of ``z`` w.r.t. the raw
``u`` is ``dz/du = grad_scale · f`` with ``grad_scale = s / tau`` and ``f = 1 - tanh²(a / softcap)``
(capped) or ``f = 1``.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class LogitProcessing(NamedTuple):
    """Scalar constants of ``z = cap_out · tanh(cap_in · alpha · (h W^T + b))`` (or ``alpha · (h W^T + b)``).

    Attributes:
        alpha: multiplies ``h W^T + b``: ``logit_scale`` when capped, ``logit_scale / tau`` otherwise.
        cap_in: ``1 / softcap`` (0 when not capped).
        cap_out: ``softcap / tau`` (0 when not capped).
        grad_scale: ``logit_scale / tau``, the constant factor of ``dz / d(h W^T + b)``.
        capped: whether the tanh cap is applied.
    """

    alpha: float
    cap_in: float
    cap_out: float
    grad_scale: float
    capped: bool


def logit_processing(temperature: float, logit_scale: float = 1.0, softcap: float | None = None) -> LogitProcessing:
    """The engine constants for one call (see the module docstring for the formula).

    Args:
        temperature: ``tau`` > 0.
        logit_scale: ``s``, multiplies ``h W^T + b`` (finite, non-zero).
        softcap: the cap (> 0), or None for no cap.

    Returns:
        :class:`LogitProcessing`.
    """
    s, tau = float(logit_scale), float(temperature)
    if softcap is None:
        return LogitProcessing(s / tau, 0.0, 0.0, s / tau, False)
    cap = float(softcap)
    return LogitProcessing(s, 1.0 / cap, cap / tau, s / tau, True)


def check_logit_processing(name: str, logit_scale: float, softcap: float | None) -> None:
    """Raise ``ValueError`` for a ``logit_scale`` that is 0 / not finite or a ``softcap`` that is not > 0.

    Args:
        name: the public op, for the message.
        logit_scale: ``s``.
        softcap: the cap or None.
    """
    s = float(logit_scale)
    if not math.isfinite(s) or s == 0.0:
        raise ValueError(f"{name}: logit_scale must be finite and non-zero, got {logit_scale}")
    if softcap is not None and not (math.isfinite(float(softcap)) and float(softcap) > 0.0):
        raise ValueError(f"{name}: softcap must be None or a finite number > 0, got {softcap}")
