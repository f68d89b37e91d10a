"""Fused token log-prob kernels (Triton) and their torch references.

Public API::

    token_logprobs(logits, labels, *, ignore_index=-100, temperature=1.0, backend=None)
    linear_token_logprobs(hidden, weight, labels, *, ignore_index=-100, temperature=1.0, backend=None,
                          bias=None, logit_scale=1.0, softcap=None)
    token_stats(logits, labels, *, ..., entropy=False, backend=None) -> TokenStats
    linear_token_stats(hidden, weight, labels, *, ..., entropy=False, backend=None,
                       bias=None, logit_scale=1.0, softcap=None) -> TokenStats
    set_backend("auto" | "torch" | "triton"); get_backend()

``import alignkit.kernels`` never imports triton; the Triton kernels are loaded on first use.
"""

from __future__ import annotations

from alignkit.kernels.dispatch import BACKENDS, get_backend, set_backend
from alignkit.kernels.logprobs import (
    linear_token_logprobs,
    linear_token_stats,
    token_logprobs,
    token_stats,
)
from alignkit.kernels.token_stats import TokenStats

__all__ = [
    "BACKENDS",
    "TokenStats",
    "get_backend",
    "linear_token_logprobs",
    "linear_token_stats",
    "set_backend",
    "token_logprobs",
    "token_stats",
]
