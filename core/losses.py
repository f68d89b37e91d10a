"""``alignkit.losses``: every selectable loss as a pure function, plus the loss helpers methods share.

Selectable losses (``loss=<name>``) are registered through the ``register_losses`` hook, built-in and
third-party alike; this module looks them up on attribute access, so ``from alignkit.losses import
dpo`` works for any installed plugin's loss. The helpers defined here (:func:`nll`) are plain
functions every method may use.
"""

from __future__ import annotations

from typing import Any

import torch


def nll(sequence_logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of the completion tokens.

    NLL = -(Σ_b Σ_t log p(y_bt | x_b, y_b<t)) / (Σ_b n_b), summed over completion tokens only
    (prompt and padding positions carry no log-prob), so long answers weigh by their token count.
    Its unit is the target token: under gradient accumulation it is one loss term whose units are
    the micro-batch's target tokens (see :mod:`alignkit.interfaces`).

    Args:
        sequence_logps: (B,) summed log-probs of each sequence's completion tokens.
        token_counts: (B,) number of completion tokens of each sequence.

    Returns:
        A scalar; 0 when no sequence has a completion token.
    """
    total = token_counts.sum().clamp_min(1)  # ()
    return -sequence_logps.sum() / total


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from .errors import UnknownNameError
    from .plugin_manager import get_registry

    try:
        return get_registry().get("losses", name).fn
    except UnknownNameError as exc:
        raise AttributeError(str(exc)) from None


def __dir__() -> list[str]:
    from .plugin_manager import get_registry

    return sorted({"nll", *get_registry().names("losses")})
